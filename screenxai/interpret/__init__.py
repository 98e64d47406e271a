"""Interpretable models after Soelistyo & Lowe: a readable formula that nearly matches the black box.

A beta-TCVAE learns disentangled features of the crops; a sparse network
over them keeps a few features; symbolic regression (pyoperon) distils it
into a short formula, scored against the black-box classifier on held-out
wells and probed with adversarial attacks. A screen of many treatments gets
one formula per treatment against the negative control, over one VAE. Inputs are plain arrays and
pandas tables, as for ``screenxai.models``.
"""

from screenxai.interpret.adversarial import DEFAULT_BUDGETS, adversarial_check, flip_budgets, pgd_attack
from screenxai.interpret.disentanglement import disentanglement_score
from screenxai.interpret.fit import InterpretableModel, InterpretConfig, InterpretError, fit_interpretable
from screenxai.interpret.formula import Formula, FormulaError, node_count
from screenxai.interpret.store import InterpretStoreError, load_interpretable, save_interpretable
from screenxai.interpret.tcvae import BetaTCVAE, TCVAEConfig, encode_means, train_tcvae
from screenxai.interpret.treatments import TreatmentModels, TreatmentView, fit_treatments

__all__ = [
    "DEFAULT_BUDGETS",
    "BetaTCVAE",
    "Formula",
    "FormulaError",
    "InterpretConfig",
    "InterpretError",
    "InterpretStoreError",
    "InterpretableModel",
    "TCVAEConfig",
    "TreatmentModels",
    "TreatmentView",
    "adversarial_check",
    "disentanglement_score",
    "encode_means",
    "fit_interpretable",
    "fit_treatments",
    "flip_budgets",
    "load_interpretable",
    "node_count",
    "pgd_attack",
    "save_interpretable",
    "train_tcvae",
]
