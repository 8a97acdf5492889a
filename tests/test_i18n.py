# ruff: noqa: RUF001 (French typography: the apostrophe is U+2019)
"""Translations: every user-facing message has a French translation, the catalog is compiled
at install time, and numbers and dates follow the reader's locale."""

from __future__ import annotations

import gettext
import re
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from babel.messages import pofile
from babel.messages.jslexer import tokenize
from quart import Quart
from werkzeug.datastructures import LanguageAccept

from serverflow import i18n

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "core" / "serverflow" / "web" / "templates"
SCRIPT = ROOT / "core" / "serverflow" / "web" / "static" / "serverflow.js"


def test_every_french_message_is_translated() -> None:
    expected = i18n.extract(ROOT)
    with i18n.po_path("fr").open("rb") as fp:
        french = pofile.read_po(fp, locale="fr")
    problems = []
    for message in expected:
        if not message.id:
            continue
        found = french.get(message.id)
        if found is None or not found.string:
            problems.append(f"untranslated: {message.id!r}")
        elif found.fuzzy:
            problems.append(f"fuzzy: {message.id!r}")
        else:
            wanted = set(re.findall(r"%\((\w+)\)s", str(message.id)))
            if set(re.findall(r"%\((\w+)\)s", str(found.string))) != wanted:
                problems.append(f"placeholders differ: {message.id!r}")
    stale = [m.id for m in french if m.id and expected.get(m.id) is None]
    problems += [f"no longer used: {m!r}" for m in stale]
    assert not problems, (
        "run `python -m serverflow.i18n update` and translate in "
        "core/serverflow/translations/fr/LC_MESSAGES/messages.po:\n" + "\n".join(problems)
    )


def test_templates_have_no_untranslated_text() -> None:
    """Text between tags and in labelling attributes goes through _()."""
    allowed = {"ServerFlow", "GitHub", "GitLab"}
    problems = []
    for template in sorted(TEMPLATES.glob("*.html")):
        source = template.read_text()
        code = re.sub(r"{% block page %}.*?{% endblock %}", " ", source)  # a data attribute
        code = re.sub(r"{#.*?#}|{%.*?%}|{{.*?}}", " ", code, flags=re.S)
        code = re.sub(r"<script\b.*?</script>", " ", code, flags=re.S)
        for attribute in re.findall(r'(?:aria-label|title|alt)="([^"]*)"', code):
            if re.search(r"[A-Za-z]", attribute):
                problems.append(f"{template.name}: attribute {attribute!r}")
        text = re.sub(r"<[^>]*>", " ", code)
        for word in re.findall(r"[A-Za-z][A-Za-z'’]+", text):
            if word not in allowed:
                problems.append(f"{template.name}: {word!r}")
    assert not problems, problems


def test_script_texts_go_through_gettext() -> None:
    """Sentences in serverflow.js are _() arguments, so the page can translate them."""
    tokens = [
        t for t in tokenize(SCRIPT.read_text()) if t.type not in ("linecomment", "multilinecomment")
    ]
    problems = []
    for index, token in enumerate(tokens):
        if token.type != "string":
            continue
        value = token.value[1:-1]
        if not re.match(r"^[A-Z][a-z]+ [a-z]", value):
            continue  # not a sentence (selectors, class names, URLs, JSON keys)
        before = [t.value for t in tokens[max(0, index - 2) : index]]
        if before != ["_", "("]:
            problems.append(value)
    assert not problems, problems


def test_the_wheel_ships_the_compiled_catalog(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("serverflow-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        with archive.open("serverflow/translations/fr/LC_MESSAGES/messages.mo") as mo:
            catalog = gettext.GNUTranslations(mo)
        assert "serverflow/web/static/serverflow.js" in archive.namelist()
    assert catalog.gettext("Servers") == "Serveurs"
    assert catalog.gettext("Server not found.") == "Serveur introuvable."


def test_language_negotiation() -> None:
    accept = LanguageAccept([("de-DE", 1), ("fr-CA", 0.8), ("en", 0.5)])
    assert i18n.negotiate(None, accept) == "fr"
    assert i18n.negotiate("en", accept) == "en"  # the user's setting wins
    assert i18n.negotiate("xx", LanguageAccept([("de", 1)])) == "en"
    assert i18n.negotiate(None, None) == "en"


@pytest.mark.parametrize(
    ("language", "percent", "number", "month"),
    [("fr", "12,5\xa0%", "1\u202f234,5", "mars"), ("en", "12.5%", "1,234.5", "Mar")],
)
async def test_numbers_and_dates_follow_the_locale(
    language: str, percent: str, number: str, month: str
) -> None:
    app = Quart(__name__)
    async with app.test_request_context("/", headers={"Accept-Language": language}):
        assert i18n.current_locale() == language
        assert i18n.format_percent_value(12.46) == percent
        assert i18n.format_number(1234.5) == number
        when = i18n.format_when(datetime(2026, 3, 1, 14, 5, tzinfo=UTC))
        assert month in when and 'datetime="2026-03-01T14:05:00+00:00"' in when
        assert i18n.format_percent_value(None) == i18n.NO_VALUE
