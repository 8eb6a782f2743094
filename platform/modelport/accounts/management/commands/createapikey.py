from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from modelport.accounts.services import api_key_issue, user_create


class Command(BaseCommand):
    help = "Create USERNAME if missing (signup grant, or exactly --credits) and print a new API key last."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--credits", type=int, default=None, help="initial credits for a new user")
        parser.add_argument("--staff", action="store_true", help="make the user staff (admin console)")

    def handle(self, *args: Any, username: str, credits: int | None, staff: bool, **options: Any) -> None:
        if credits is not None and credits < 0:
            self.stderr.write("--credits must be >= 0")
            raise SystemExit(2)
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            user = user_create(username=username, credits=credits, is_staff=staff)
            self.stderr.write(f"created user {username}")
        elif staff and not user.is_staff:
            user.is_staff = True
            user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
        issued = api_key_issue(user=user, name="createapikey")
        self.stdout.write(issued.secret)
