from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from modelport.billing.models import CreditAccount
from modelport.billing.services import format_credits, ledger_drift


class Command(BaseCommand):
    help = "Recompute every balance from the ledger; print accounts that drift. Exit 1 on any drift."

    def handle(self, *args: Any, **options: Any) -> None:
        drifting = 0
        for account in CreditAccount.objects.select_related("user").iterator():
            drift = ledger_drift(account=account)
            if drift:
                drifting += 1
                self.stdout.write(
                    f"{account.user.username}: balance differs from the ledger by {format_credits(drift)}"
                )
        self.stdout.write(f"{drifting} account(s) drift")
        if drifting:
            raise SystemExit(1)
