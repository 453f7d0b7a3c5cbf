"""django-helpdesk's `get_email` on the same kind of mailbox, for a side-by-side rate.

A virtualenv of its own (default ~/.cache/mailbridge-bench/helpdesk-venv) gets
`django-helpdesk==2.6.1` from PyPI; a minimal Django project (SQLite, SMTP to the benchmark's
sink) is written to a work directory, migrated, and given one Queue that reads the Dovecot
user over IMAP (`email_box_type="imap"`, STARTTLS verified with the test CA). Then
`python manage.py get_email` drains the mailbox once, and is timed.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = "2.6.1"
DEFAULT_VENV = Path.home() / ".cache" / "mailbridge-bench" / "helpdesk-venv"

SETTINGS = """\
from pathlib import Path
BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
SITE_ID = 1
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
    "django.contrib.sites", "django.contrib.humanize", "rest_framework", "helpdesk",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "benchsite.urls"
TEMPLATES = [{{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {{"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]}},
}}]
DATABASES = {{
    "default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}},
}}
USE_TZ = True
STATIC_URL = "/static/"
MEDIA_ROOT = str(BASE_DIR / "media")
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = {smtp_port}
EMAIL_USE_TLS = False
DEFAULT_FROM_EMAIL = "{user}"
HELPDESK_TEAMS_MODE_ENABLED = False
LOGGING = {{"version": 1, "disable_existing_loggers": False,
           "root": {{"level": "WARNING", "handlers": []}}}}
"""

URLS = """\
from django.contrib import admin
from django.urls import include, path
urlpatterns = [path("admin/", admin.site.urls), path("", include("helpdesk.urls"))]
"""

MANAGE = """\
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""

QUEUE = """\
from helpdesk.models import Queue
Queue.objects.all().delete()
Queue.objects.create(
    title="Support", slug="support", email_address="{user}", allow_email_submission=True,
    email_box_type="imap", email_box_host="127.0.0.1", email_box_port={port},
    email_box_ssl=False, email_box_user="{user}", email_box_pass="{password}",
    email_box_imap_folder="INBOX", email_box_interval=0,
)
"""


@dataclass
class HelpdeskRun:
    messages: int
    tickets: int
    seconds: float
    peak_rss_mb: float
    acks_seen: int
    cpu_seconds: float  # user + system of get_email, start-up included

    @property
    def rate(self) -> float:
        return self.tickets / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_seconds / self.tickets if self.tickets else 0.0


def ensure_venv(venv: Path = DEFAULT_VENV) -> Path:
    python = venv / "bin" / "python"
    probe = [str(python), "-c", f"import helpdesk, importlib.metadata as m; "
             f"assert m.version('django-helpdesk') == '{VERSION}'"]  # fmt: skip
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    print(f"installing django-helpdesk {VERSION} into {venv} …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"django-helpdesk=={VERSION}"], check=True
    )
    return python


def prepare(python: Path, workdir: Path, *, user: str, password: str, imap_port: int,
            smtp_port: int) -> Path:  # fmt: skip
    site = workdir / "benchsite"
    site.mkdir(parents=True, exist_ok=True)
    (site / "__init__.py").write_text("")
    (site / "settings.py").write_text(SETTINGS.format(smtp_port=smtp_port, user=user))
    (site / "urls.py").write_text(URLS)
    (workdir / "manage.py").write_text(MANAGE)
    manage = [str(python), "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=workdir, check=True)
    queue = QUEUE.format(user=user, password=password, port=imap_port)
    subprocess.run([*manage, "shell", "-c", queue], cwd=workdir, check=True)
    return workdir


def drain(
    python: Path, workdir: Path, *, ca_file: Path, messages: int, sink_count: object
) -> HelpdeskRun:
    """`manage.py get_email` once; its time, tickets made and peak RSS (from wait4)."""
    count = sink_count  # a callable: acks the sink has accepted so far
    before = count()  # type: ignore[operator]
    env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
    log = (workdir / "get_email.log").open("wb")
    began = time.perf_counter()
    process = subprocess.Popen(
        [str(python), "manage.py", "get_email", "--quiet"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if process.returncode != 0:
        tail = (workdir / "get_email.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"get_email failed ({process.returncode}):\n{tail}")
    with sqlite3.connect(workdir / "benchsite" / "db.sqlite3") as db:
        tickets = db.execute("SELECT count(*) FROM helpdesk_ticket").fetchone()[0]
    time.sleep(0.5)  # its SMTP sends are synchronous; let the sink's thread record the last
    cpu = usage.ru_utime + usage.ru_stime
    acks = count() - before  # type: ignore[operator]
    return HelpdeskRun(messages, tickets, seconds, usage.ru_maxrss / 1024, acks, cpu)
