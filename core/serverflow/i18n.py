"""Languages of the dashboard: Babel catalogs, the caller's locale, locale-aware formatting.

Message ids are the English texts. The French catalog lives in
`translations/fr/LC_MESSAGES/messages.po` and is compiled to `.mo` when the package is
installed (hatch_build.py). `python -m serverflow.i18n update` re-extracts every message
(templates, Python, JavaScript, error codes) and merges new ones into the catalogs.
"""

from __future__ import annotations

import functools
import gettext as stdlib_gettext
import io
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_datetime, format_timedelta
from babel.messages import mofile, pofile
from babel.messages.catalog import Catalog
from babel.numbers import format_decimal, format_percent
from markupsafe import Markup
from quart import Quart, g, has_request_context, has_websocket_context, request, websocket
from werkzeug.datastructures import LanguageAccept

from serverflow.errors import CODES

SUPPORTED: tuple[str, ...] = ("en", "fr")
DEFAULT = "en"
# Each language is offered under its own name, whatever the current language is.
NAMES = {"en": "English", "fr": "Français"}
DOMAIN = "messages"
CATALOGS = Path(__file__).with_name("translations")
NO_VALUE = "\u2013"  # an en dash where there is no figure
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}


def N_(message: str) -> str:
    """Mark a string for extraction; it is translated where it is shown."""
    return message


def po_path(locale: str) -> Path:
    return CATALOGS / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def compile_po(po: Path) -> bytes:
    """The .mo bytes of a .po catalog (fuzzy entries left out, as msgfmt does)."""
    with po.open("rb") as fp:
        catalog = pofile.read_po(fp, locale=po.parent.parent.name)
    out = io.BytesIO()
    mofile.write_mo(out, catalog, use_fuzzy=False)
    return out.getvalue()


@functools.cache
def translations(locale: str) -> stdlib_gettext.NullTranslations:
    """The compiled catalog of a language (English needs none: the ids are English)."""
    if locale not in SUPPORTED or locale == DEFAULT:
        return stdlib_gettext.NullTranslations()
    po = po_path(locale)
    mo = po.with_suffix(".mo")
    if mo.exists() and (not po.exists() or mo.stat().st_mtime >= po.stat().st_mtime):
        with mo.open("rb") as fp:
            return stdlib_gettext.GNUTranslations(fp)
    if po.exists():  # a checkout whose catalog changed since it was installed
        return stdlib_gettext.GNUTranslations(io.BytesIO(compile_po(po)))
    return stdlib_gettext.NullTranslations()


def negotiate(preferred: str | None, accept: LanguageAccept | None) -> str:
    """The user's setting, else the browser's Accept-Language, else English."""
    if preferred in SUPPORTED:
        return str(preferred)
    for value, quality in accept or ():  # best first; "fr-CA" counts as French
        tag = str(value).lower().replace("_", "-")
        for candidate in (tag, tag.split("-")[0]):
            if quality > 0 and candidate in SUPPORTED:
                return candidate
    return DEFAULT


def _accept() -> LanguageAccept | None:
    if has_request_context():
        return request.accept_languages
    if has_websocket_context():
        return websocket.accept_languages
    return None


def current_locale() -> str:
    """The language of the current request (set by `resolve_locale`, else the browser's)."""
    if has_request_context() or has_websocket_context():
        chosen = g.get("sf_locale")
        if chosen:
            return str(chosen)
        return negotiate(None, _accept())
    return DEFAULT


async def resolve_locale() -> str:
    """Decide the caller's language once per request: their setting, else the browser's."""
    if g.get("sf_locale"):
        return str(g.sf_locale)
    from serverflow.auth import session_user

    preferred = None
    try:
        found = await session_user()
    except Exception:  # noqa: BLE001 (an error page must render even without a database)
        found = None
    if found is not None:
        preferred = found[1].locale
    g.sf_locale = negotiate(preferred, _accept())
    return str(g.sf_locale)


# -- translating --------------------------------------------------------------------


def gettext(message: str, **variables: Any) -> str:
    text = translations(current_locale()).gettext(message)
    return text % variables if variables else text


_ = gettext


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    text = translations(current_locale()).ngettext(singular, plural, n)
    return text % {"num": n, **variables}


def error_message(code: str, fallback: str) -> str:
    """An API error in the reader's language: the code's meaning, else the API's text.

    In English the API's own message is the most precise; other languages get the
    translated meaning of the stable error code.
    """
    if current_locale() == DEFAULT or code not in CODES:
        return fallback
    meaning = CODES[code][1]
    translated = translations(current_locale()).gettext(meaning)
    return translated if translated != meaning else fallback


def error_messages() -> dict[str, str]:
    """Every error code's meaning in the current language (empty in English)."""
    locale = current_locale()
    if locale == DEFAULT:
        return {}
    catalog = translations(locale)
    return {code: catalog.gettext(meaning) for code, (_status, meaning) in CODES.items()}


# -- formatting ---------------------------------------------------------------------


def format_number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return NO_VALUE
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    return str(format_decimal(value, format=pattern, locale=current_locale()))


def format_percent_value(value: float | int | None) -> str:
    """A 0-100 figure as a percentage with one decimal, e.g. 12.5 → "12,5 %" in French."""
    if value is None:
        return NO_VALUE
    pattern = Locale.parse(current_locale()).percent_formats[None].pattern
    pattern = (
        pattern.replace("0%", "0.0%")
        .replace("0\xa0%", "0.0\xa0%")
        .replace("0\u202f%", "0.0\u202f%")
    )
    amount = Decimal(str(round(float(value), 1))) / 100
    return str(format_percent(amount, format=pattern, locale=current_locale()))


def format_when(value: datetime | None) -> Markup:
    """A `<time>` element: the date in the reader's language (UTC; the page shows it local)."""
    if value is None:
        return Markup('<span class="muted">{}</span>').format(gettext("never"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = format_datetime(value, format="medium", tzinfo=UTC, locale=current_locale())
    return Markup('<time datetime="{}">{}</time>').format(value.isoformat(), text)


def format_duration(ms: int | None) -> str:
    if ms is None:
        return NO_VALUE
    return str(
        format_timedelta(
            timedelta(milliseconds=ms), threshold=1.5, format="short", locale=current_locale()
        )
    )


def init_app(app: Quart) -> None:
    """Give the app's templates `_()`, `ngettext()` and the formatting filters."""
    env = app.jinja_env
    if "jinja2.ext.InternationalizationExtension" not in env.extensions:
        env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=lambda s: translations(current_locale()).gettext(s),
        ngettext=lambda s, p, n: translations(current_locale()).ngettext(s, p, n),
        newstyle=True,
    )
    env.filters.update(
        number=format_number,
        percent=format_percent_value,
        when=format_when,
        duration=format_duration,
    )
    env.globals.update(current_locale=current_locale, error_message=error_message, LANGUAGES=NAMES)

    @app.context_processor
    async def _locale() -> dict[str, Any]:
        return {"locale": await resolve_locale()}


# -- catalogs (for developers; needs the source tree) ---------------------------------


def extract(root: Path) -> Catalog:
    """Every user-facing message: templates, Python and JavaScript, and the error codes."""
    from babel.messages.extract import extract_from_dir
    from babel.messages.frontend import parse_mapping_cfg

    with (root / "babel.cfg").open() as fp:
        method_map, options_map = parse_mapping_cfg(fp)
    catalog = Catalog(project="ServerFlow", version="1", domain=DOMAIN, fuzzy=False)
    for filename, lineno, message, comments, _context in extract_from_dir(
        root,
        method_map,
        options_map,
        keywords=KEYWORDS,
        comment_tags=("TRANSLATORS:",),
        strip_comment_tags=True,
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments)
    for code, (_status, meaning) in CODES.items():
        catalog.add(meaning, None, [("core/serverflow/errors.py", 0)], auto_comments=[code])
    return catalog


def update(root: Path) -> list[str]:
    """Write messages.pot and merge it into each catalog; returns the untranslated ids."""
    template = extract(root)
    CATALOGS.mkdir(parents=True, exist_ok=True)
    with (CATALOGS / f"{DOMAIN}.pot").open("wb") as fp:
        pofile.write_po(fp, template, width=100, omit_header=False, sort_output=True)
    missing: list[str] = []
    for locale in SUPPORTED:
        if locale == DEFAULT:
            continue
        po = po_path(locale)
        if po.exists():
            with po.open("rb") as fp:
                catalog = pofile.read_po(fp, locale=locale)
        else:
            po.parent.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(locale=locale, domain=DOMAIN, project="ServerFlow")
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        catalog.fuzzy = False
        catalog.header_comment = f"# Translations of the ServerFlow dashboard ({locale}).\n"
        catalog.msgid_bugs_address = ""
        catalog.project, catalog.version = "ServerFlow", "1"
        catalog.last_translator = catalog.language_team = "ServerFlow developers"
        with po.open("wb") as fp:
            pofile.write_po(fp, catalog, width=100, sort_output=True, ignore_obsolete=True)
        missing += [f"{locale}: {m.id}" for m in catalog if m.id and not m.string]
    return missing


if __name__ == "__main__":  # python -m serverflow.i18n update
    if sys.argv[1:] != ["update"]:
        sys.exit("usage: python -m serverflow.i18n update")
    untranslated = update(Path(__file__).resolve().parents[2])
    for line in untranslated:
        print("untranslated:", line)
    sys.exit(1 if untranslated else 0)
