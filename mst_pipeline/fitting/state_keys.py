"""How a checkpoint's tensors meet a network's: the one key report of the MST's weight loaders
(VPoser-style prior, PARE)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class KeyReport:
    """Loaded tensors, and by name the missing (left at their initial values), unexpected and
    shape-mismatched ones (not loaded); `ignored` counts a checkpoint's non-network entries."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:12]) + (f" … ({len(keys)} in all)" if len(keys) > 12 else "")

        parts = [f"missing {len(self.missing)}: {few(self.missing)}" if self.missing else "",
                 f"unexpected {len(self.unexpected)}: {few(self.unexpected)}" if self.unexpected else "",
                 f"shape mismatch: {few(self.mismatched)}" if self.mismatched else ""]
        return "; ".join(p for p in parts if p) or f"all {self.loaded} network tensors loaded"


def compare_state(module: nn.Module, state: dict[str, Tensor], ignored: int = 0
                  ) -> tuple[KeyReport, dict[str, Tensor]]:
    """(report, the tensors of STATE whose name and shape match MODULE's, in its dtypes)."""
    own = module.state_dict()
    report = KeyReport(ignored=ignored, missing=sorted(set(own) - set(state)),
                       unexpected=sorted(set(state) - set(own)))
    usable = {}
    for k in sorted(set(own) & set(state)):
        if tuple(state[k].shape) != tuple(own[k].shape):
            report.mismatched.append(f"{k}: {list(state[k].shape)} vs {list(own[k].shape)}")
        else:
            usable[k] = state[k].to(own[k].dtype)
    report.loaded = len(usable)
    return report, usable
