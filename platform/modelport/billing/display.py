"""How people see credit amounts: one format for every page and the admin.

`credits_display(50_000_000_000)` → "50,000.000000": thousands grouped, always six decimals (one
micro-credit, the ledger's unit), so a balance, a charge and a grant read alike wherever they appear.
Machine-read outputs (CSV, problem details) keep `billing.services.format_credits` (no grouping)."""

from __future__ import annotations

from modelport.billing.models import MICRO


def credits_display(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole:,}.{frac:06d}"
