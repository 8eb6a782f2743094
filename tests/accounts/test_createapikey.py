"""`manage.py createapikey USERNAME [--credits N] [--staff] [--password | --generate-password]`:
the key is the last line of stdout; a password set by the command signs in to the dashboard's
login form and, for staff, the admin's; a refused password changes nothing."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from modelport.accounts.models import ApiKey
from modelport.accounts.services import api_key_authenticate

from tests.stack import REPO, process_env

PASSWORD = "tensor-Parity-42"

pytestmark = pytest.mark.django_db


def run(*args: str, stdin: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    call_command("createapikey", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def assert_key_of(line: str, username: str) -> None:
    key = api_key_authenticate(raw=line)
    assert key is not None and key.user.username == username


def test_plain_prints_only_the_key_and_sets_no_password():
    out, err = run("alice")
    lines = out.splitlines()
    assert len(lines) == 1
    assert_key_of(lines[0], "alice")
    assert "created user alice" in err
    assert not get_user_model().objects.get(username="alice").has_usable_password()


def test_generate_password_prints_it_before_the_key_and_it_signs_in(client):
    out, _ = run("bob", "--generate-password")
    first, last = out.splitlines()
    assert first.startswith("Password: ")
    password = first.removeprefix("Password: ")
    assert len(password) >= 12
    assert_key_of(last, "bob")
    assert client.login(username="bob", password=password)
    # Run again: a new password (the old one stops working) and a second key.
    out, _ = run("bob", "--generate-password")
    again = out.splitlines()[0].removeprefix("Password: ")
    assert again != password
    assert not client.login(username="bob", password=password)
    assert client.login(username="bob", password=again)
    assert ApiKey.objects.filter(user__username="bob").count() == 2


def test_password_from_stdin_signs_in_through_the_dashboard_form(client, monkeypatch):
    out, _ = run("carol", "--password", stdin=f"{PASSWORD}\n", monkeypatch=monkeypatch)
    assert len(out.splitlines()) == 1
    assert_key_of(out.splitlines()[-1], "carol")
    form = client.get("/login/")
    assert form.status_code == 200
    resp = client.post("/login/", {"username": "carol", "password": PASSWORD})
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    assert "carol" in client.get("/").content.decode()


def test_password_prompted_twice_on_a_terminal(monkeypatch):
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    with pytest.raises(CommandError, match="the two passwords differ"):
        call_command("createapikey", "dave", "--password", stdout=io.StringIO(), stderr=io.StringIO())
    assert not get_user_model().objects.filter(username="dave").exists()

    answers = iter([PASSWORD, PASSWORD])
    out = io.StringIO()
    call_command("createapikey", "dave", "--password", stdout=out, stderr=io.StringIO())
    assert_key_of(out.getvalue().splitlines()[-1], "dave")
    assert get_user_model().objects.get(username="dave").check_password(PASSWORD)


@pytest.mark.parametrize(("given", "reason"), [("\n", "an empty password"), ("short\n", "too short"),
                                                ("password123\n", "too common")])
def test_refused_password_changes_nothing(monkeypatch, given, reason):
    with pytest.raises(CommandError, match=reason):
        run("erin", "--password", stdin=given, monkeypatch=monkeypatch)
    assert not get_user_model().objects.filter(username="erin").exists()
    assert ApiKey.objects.count() == 0

    run("erin", "--password", stdin=f"{PASSWORD}\n", monkeypatch=monkeypatch)
    with pytest.raises(CommandError, match=reason):
        run("erin", "--password", stdin=given, monkeypatch=monkeypatch)
    assert get_user_model().objects.get(username="erin").check_password(PASSWORD)
    assert ApiKey.objects.filter(user__username="erin").count() == 1


def test_password_options_are_exclusive():
    with pytest.raises(CommandError, match="not allowed with argument"):
        run("frank", "--password", "--generate-password")
    assert not get_user_model().objects.filter(username="frank").exists()


def test_staff_without_password_is_told_how_to_set_one():
    out, err = run("root", "--staff")
    assert_key_of(out.splitlines()[-1], "root")
    assert "has no password yet" in err and "createapikey root --password" in err


def test_staff_with_password_signs_in_to_the_admin(client, monkeypatch):
    out, err = run("ops", "--staff", "--password", stdin=f"{PASSWORD}\n", monkeypatch=monkeypatch)
    assert_key_of(out.splitlines()[-1], "ops")
    assert "sign in to the admin at /admin/" in err and "as ops" in err
    form = client.get("/admin/login/")
    assert form.status_code == 200
    resp = client.post("/admin/login/?next=/admin/", {"username": "ops", "password": PASSWORD, "next": "/admin/"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_existing_user_made_staff_and_given_a_password(client, monkeypatch):
    run("gina")
    run("gina", "--staff", "--password", stdin=f"{PASSWORD}\n", monkeypatch=monkeypatch)
    user = get_user_model().objects.get(username="gina")
    assert user.is_staff and user.is_superuser and user.check_password(PASSWORD)
    assert client.login(username="gina", password=PASSWORD)
    assert client.get("/admin/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_key_is_the_last_line_of_stdout_as_a_process(settings):
    """As a script uses it: `printf … | manage.py createapikey … --staff --password`, stdout's
    last line is the key; messages go to stderr."""
    from django.db import connection

    settings.PASSWORD_HASHERS = [*settings.PASSWORD_HASHERS, "django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    env = process_env(DATABASE_URL=f"{base}/{connection.settings_dict['NAME']}")
    done = subprocess.run([sys.executable, "manage.py", "createapikey", "hank", "--staff", "--password"], cwd=REPO,
                          env=env, input=f"{PASSWORD}\n", capture_output=True, text=True, timeout=120, check=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert_key_of(lines[-1], "hank")
    assert "created user hank" in done.stderr and "sign in to the admin" in done.stderr
    assert get_user_model().objects.get(username="hank").check_password(PASSWORD)
