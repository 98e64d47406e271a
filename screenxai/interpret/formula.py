"""Symbolic regression: a short formula over a few named latents, as plain math.

pyoperon searches for expressions with two objectives (fit and length); each
model of its Pareto front is simplified with sympy, its constants rounded
to ``precision`` significant digits, printed, and parsed back. The parsed,
printed formula is what gets evaluated and what gets counted, so the formula
a scientist reads is exactly the one that classifies, and its complexity is
the number of nodes of that expression tree (operators, symbols, numbers;
operon's own length leaves out the scale and intercept it adds). Among the
candidates within ``max_complexity`` nodes, the simplest whose sign agrees
with the target's sign nearly as often as the best one's is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import sympy
import torch

from screenxai.errors import ScreenxaiError

LOGIT_CLIP = 6.0


class FormulaError(ScreenxaiError):
    """No formula could be fitted or read as asked."""


@dataclass(frozen=True)
class FormulaConfig:
    """pyoperon search settings and the limits on the printed formula."""

    max_complexity: int = 15
    symbols: str = "add,sub,mul,constant,variable"
    population_size: int = 300
    generations: int = 40
    max_length: int = 12
    precision: int = 3
    tolerance: float = 0.005
    seed: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Formula:
    """A parsed formula: its printed text, sympy expression and node count."""

    text: str
    expression: sympy.Expr
    complexity: int

    @classmethod
    def parse(cls, text: str) -> Formula:
        """The formula printed as ``text`` (e.g. ``"1.2*z3 - 0.5"``)."""
        try:
            expression = sympy.sympify(text, rational=False)
        except (sympy.SympifyError, SyntaxError, TypeError) as err:
            raise FormulaError(f"cannot read formula {text!r}: {err}") from err
        return cls(text, expression, node_count(expression))

    @property
    def variables(self) -> list[str]:
        """Names of the symbols the formula uses, sorted."""
        return sorted(str(s) for s in self.expression.free_symbols)

    def evaluate(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The formula's value (float64) for each row of ``inputs`` (name -> (N,) array)."""
        n = len(next(iter(inputs.values())))
        tensors = {name: torch.as_tensor(np.asarray(v, np.float64)) for name, v in inputs.items()}
        return evaluate_torch(self.expression, tensors, n).numpy()


def node_count(expression: sympy.Basic) -> int:
    """Nodes of a sympy expression tree: every operator, function, symbol and number."""
    return sum(1 for _ in sympy.preorder_traversal(expression))


def _unary(name: str):
    functions = {"exp": torch.exp, "log": torch.log, "sin": torch.sin, "cos": torch.cos, "tanh": torch.tanh,
                 "Abs": torch.abs, "sqrt": torch.sqrt}
    if name not in functions:
        raise FormulaError(f"formula uses function {name!r}, which has no torch counterpart here")
    return functions[name]


def evaluate_torch(expression: sympy.Basic, inputs: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
    """The formula on torch tensors (differentiable), walking the sympy tree.

    ``inputs`` maps symbol names to (N,) tensors; numbers broadcast to N.
    """
    like = next(iter(inputs.values())) if inputs else torch.zeros(n, dtype=torch.float64)
    if expression.is_Symbol:
        if str(expression) not in inputs:
            raise FormulaError(f"formula needs input {expression}, which was not given")
        return inputs[str(expression)]
    if expression.is_Number:
        return torch.full((n,), float(expression), dtype=like.dtype, device=like.device)
    args = [evaluate_torch(a, inputs, n) for a in expression.args]
    if expression.is_Add:
        return torch.stack(args).sum(0)
    if expression.is_Mul:
        return torch.stack(args).prod(0)
    if expression.is_Pow:
        return args[0] ** args[1]
    if len(args) == 1:
        return _unary(type(expression).__name__)(args[0])
    raise FormulaError(f"formula node {expression.func} is not supported")


def printed(expression: sympy.Expr, precision: int) -> Formula:
    """``expression`` simplified, with constants rounded to ``precision`` significant digits, printed and parsed.

    Of the simplified form and its expansion, the one with fewer nodes is kept.
    """
    simple = sympy.simplify(sympy.expand(expression))
    rounded = simple.xreplace({f: sympy.Float(f, precision) for f in simple.atoms(sympy.Float)})
    forms = [Formula.parse(sympy.sstr(form)) for form in (sympy.expand(rounded), rounded)]
    return min(forms, key=lambda f: f.complexity)


def _candidates(x: np.ndarray, target: np.ndarray, names: Sequence[str], config: FormulaConfig) -> list[Formula]:
    from pyoperon.sklearn import SymbolicRegressor

    regressor = SymbolicRegressor(
        allowed_symbols=config.symbols, objectives=["r2", "length"], population_size=config.population_size,
        generations=config.generations, max_length=config.max_length, max_evaluations=10**9, n_threads=1,
        random_state=config.seed)
    regressor.fit(np.asarray(x, np.float32), np.asarray(target, np.float32))
    return [printed(sympy.sympify(regressor.get_model_string(m["tree"], 8, list(names))), config.precision)
            for m in regressor.pareto_front_]


def fit_formula(x: np.ndarray, target_logit: np.ndarray, names: Sequence[str], config: FormulaConfig) -> Formula:
    """A formula over the columns of ``x`` (named ``names``) whose sign follows ``target_logit``'s.

    The target is clipped to +-6 so that the search spends its effort near
    the decision boundary, not on saturated cells far from it.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != len(names) or len(x) != len(target_logit):
        raise FormulaError(f"inputs of shape {x.shape} do not fit {len(names)} names and {len(target_logit)} targets")
    target = np.clip(np.asarray(target_logit, np.float64), -LOGIT_CLIP, LOGIT_CLIP)
    inputs = {name: x[:, i] for i, name in enumerate(names)}
    scored = []
    for formula in _candidates(x, target, names, config):
        if formula.complexity <= config.max_complexity:
            agreement = float(((formula.evaluate(inputs) > 0) == (target > 0)).mean())
            scored.append((agreement, formula))
    if not scored:
        raise FormulaError(f"no formula on operon's Pareto front has at most {config.max_complexity} nodes "
                           "once simplified; lower max_length")
    best = max(agreement for agreement, _ in scored)
    return min((f for a, f in scored if a >= best - config.tolerance), key=lambda f: (f.complexity, f.text))
