from __future__ import annotations

import getpass
import secrets
import sys
from typing import Any

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from modelport.accounts.services import api_key_issue, user_create, user_set_password


class Command(BaseCommand):
    help = (
        "Create USERNAME if missing (signup grant, or exactly --credits) and print a new API key as the last line "
        "of stdout. --password asks for a password (read from stdin's first line when stdin is not a terminal); "
        "--generate-password sets a random one and prints it as 'Password: …' before the key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--credits", type=int, default=None, help="initial credits for a new user")
        parser.add_argument("--staff", action="store_true", help="make the user staff (admin console)")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--password", action="store_true",
                           help="set the user's password: asked twice on a terminal, else stdin's first line")
        group.add_argument("--generate-password", action="store_true",
                           help="set a new random password and print it as 'Password: …' before the key")

    def handle(self, *args: Any, username: str, credits: int | None, staff: bool, password: bool,
               generate_password: bool, **options: Any) -> None:
        if credits is not None and credits < 0:
            self.stderr.write("--credits must be >= 0")
            raise SystemExit(2)
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        # The password is read and validated before anything is written: a refused one changes nothing.
        new_password = None
        if password:
            new_password = self._read_password(user or User(username=username))
        elif generate_password:
            new_password = secrets.token_urlsafe(12)
        if user is None:
            user = user_create(username=username, credits=credits, is_staff=staff)
            self.stderr.write(f"created user {username}")
        elif staff and not user.is_staff:
            user.is_staff = True
            user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
        if new_password is not None:
            user_set_password(user=user, password=new_password)
        if staff:
            self._admin_hint(user, username)
        issued = api_key_issue(user=user, name="createapikey")
        if generate_password:
            self.stdout.write(f"Password: {new_password}")
        self.stdout.write(issued.secret)

    def _read_password(self, user: AbstractBaseUser) -> str:
        if sys.stdin.isatty():
            first = getpass.getpass("Password: ")
            if getpass.getpass("Password (again): ") != first:
                raise CommandError("the two passwords differ; nothing was changed")
        else:
            first = sys.stdin.readline().rstrip("\r\n")
        if not first:
            raise CommandError("an empty password was given; nothing was changed")
        try:
            password_validation.validate_password(first, user)
        except ValidationError as exc:
            raise CommandError(f"password refused ({' '.join(exc.messages)}); nothing was changed") from exc
        return first

    def _admin_hint(self, user: AbstractBaseUser, username: str) -> None:
        if user.has_usable_password():
            self.stderr.write(f"{username} is staff: sign in to the admin at /admin/ "
                              f"(e.g. http://127.0.0.1:8000/admin/) as {username} with its password")
        else:
            self.stderr.write(f"{username} is staff but has no password yet, so it cannot sign in to the admin "
                              f"(/admin/): set one with `python manage.py createapikey {username} --password` "
                              f"(or `python manage.py changepassword {username}`)")
