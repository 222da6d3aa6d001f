"""Which optimizer trains which parameter (SPEC 2.6): every trainable parameter has exactly one home.

Four groups, decided from the parameter's name and shape:

* ``token``  - ``tok_emb.weight`` (Adam; also the tied output head);
* ``head``   - ``lm_head.weight`` when the embeddings are untied (Adam);
* ``matrix`` - 2-D parameters inside ``blocks`` whose name matches no control pattern (Muon);
* ``scalar`` - parameters inside ``blocks`` with ndim < 2 or a control-pattern name, and, outside
  ``blocks``, parameters with ndim < 2, a control-pattern name, or a direct attribute of the model
  such as ``skip_weights`` (Adam).

Each rule is checked independently and the number of matches is asserted to be one, so a new feature
whose parameter fits no rule (or two) fails loudly at start-up instead of silently staying untrained.
"""

from collections.abc import Sequence

import torch
from torch import nn

from pgolf.errors import ConfigError

PARAMETER_GROUP_NAMES = ("token", "head", "matrix", "scalar")

GroupMembers = list[tuple[str, nn.Parameter]]


def _optim_groups_matching(
    name: str, param: torch.Tensor, *, tie_embeddings: bool, control_patterns: Sequence[str]
) -> list[str]:
    """Every group whose rule accepts this parameter (exactly one for a well-formed model)."""
    is_control = any(pattern and pattern in name for pattern in control_patterns)
    in_blocks = name.startswith("blocks.")
    # A direct attribute of the model (no module path), e.g. ``skip_weights``.
    is_top_level = "." not in name
    candidates = []
    if name == "tok_emb.weight":
        candidates.append("token")
    if name == "lm_head.weight" and not tie_embeddings:
        candidates.append("head")
    if in_blocks and param.ndim == 2 and not is_control:
        candidates.append("matrix")
    if in_blocks and (param.ndim < 2 or is_control):
        candidates.append("scalar")
    if not in_blocks and (param.ndim < 2 or is_control or is_top_level):
        candidates.append("scalar")
    return candidates


def _optim_group_message(name: str, param: torch.Tensor, candidates: list[str], tie_embeddings: bool) -> str:
    """Why ``name`` has not exactly one group. A message only: raised at the call site, so `pgolf export`
    moves it out of the counted script (it drops what only words an error)."""
    shape = tuple(param.shape)
    if candidates:
        return (
            f"parameter {name!r} (shape {shape}) matches several optimizer groups {candidates}; every "
            "parameter must be trained by exactly one optimizer. Rename it or adjust "
            "CONTROL_TENSOR_NAME_PATTERNS so that only one rule in pgolf/optim/groups.py applies."
        )
    if name == "lm_head.weight" and tie_embeddings:
        return (
            "the model has a separate 'lm_head.weight' but TIE_EMBEDDINGS is on; build the model with "
            "tie_embeddings matching the config (TIE_EMBEDDINGS=0 to train an untied head)."
        )
    return (
        f"parameter {name!r} (shape {shape}) belongs to no optimizer group, so it would never be trained. "
        "Give it a name matching a control pattern (CONTROL_TENSOR_NAME_PATTERNS) if it is a small "
        "control tensor, or add a rule for it in pgolf/optim/groups.py."
    )


def assign_parameter_groups(
    model: nn.Module, *, tie_embeddings: bool, control_patterns: Sequence[str]
) -> dict[str, GroupMembers]:
    """Split the model's trainable parameters into the groups ``token``, ``head``, ``matrix``, ``scalar``.

    Returns a dict with all four keys (``head`` is empty when embeddings are tied), each a list of
    ``(name, parameter)`` in ``model.named_parameters()`` order. Raises ``ConfigError`` naming the
    parameter if any trainable parameter fits no group or more than one, or if ``tok_emb.weight``
    is missing.
    """
    groups: dict[str, GroupMembers] = {group: [] for group in PARAMETER_GROUP_NAMES}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        candidates = _optim_groups_matching(
            name, param, tie_embeddings=tie_embeddings, control_patterns=control_patterns
        )
        if len(candidates) != 1:
            raise ConfigError(_optim_group_message(name, param, candidates, tie_embeddings))
        groups[candidates[0]].append((name, param))
    if not groups["token"]:
        raise ConfigError(
            "the model has no trainable 'tok_emb.weight'; the token embedding must be named tok_emb "
            "so that it gets its own Adam optimizer (see pgolf/optim/groups.py)."
        )
    if not tie_embeddings and not groups["head"]:
        raise ConfigError(
            "TIE_EMBEDDINGS is off but the model has no trainable 'lm_head.weight'; build the model "
            "with an untied head or set TIE_EMBEDDINGS=1."
        )
    _assert_each_parameter_once(model, groups)
    return groups


def _assert_each_parameter_once(model: nn.Module, groups: dict[str, GroupMembers]) -> None:
    """Cross-check by identity: the groups hold every trainable tensor exactly once."""
    assigned = [id(p) for members in groups.values() for _, p in members]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(assigned) == len(set(assigned)), "a parameter was assigned to two optimizer groups"
    assert set(assigned) == trainable, "optimizer groups do not cover exactly the trainable parameters"
