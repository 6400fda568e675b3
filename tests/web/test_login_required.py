"""Every URL of the console asks for a login; each role lands on its screen."""

import re
import uuid

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

pytestmark = pytest.mark.django_db

SAMPLES = {"int": "1", "str": "x", "slug": "x", "path": "x", "uuid": str(uuid.uuid4())}
# Pages an anonymous visitor may open: the two login forms.
PUBLIC = {"login", "admin:login"}


def _fill_route(route: str) -> str:
    return re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLES[m.group(1) or "str"], route)


def _fill_regex(regex: str) -> str:
    def group(match: re.Match) -> str:
        body = match.group(1)
        return body.split("|")[0] if re.fullmatch(r"[\w|]+", body) else "x"

    filled = re.sub(r"\(\?P<\w+>([^)]*)\)", group, regex)
    return filled.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\", "")


def _all_urls(patterns=None, prefix="", namespace=""):
    """Yield (name, path) for every pattern, with sample values for arguments."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        pattern = entry.pattern
        raw = str(pattern)
        part = (
            _fill_regex(pattern.regex.pattern)
            if hasattr(pattern, "_regex") and not hasattr(pattern, "_route")
            else _fill_route(raw)
        )
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _all_urls(entry.url_patterns, prefix + part, inner)
        elif isinstance(entry, URLPattern):
            yield f"{namespace}{entry.name or '?'}", "/" + prefix + part


def all_urls():
    return sorted(set(_all_urls()))


def test_the_url_list_covers_the_console():
    names = {name for name, _ in all_urls()}

    assert {
        "home",
        "approvals:queue",
        "approvals:audit",
        "runs:threads",
        "api-schema",
    } <= names


@pytest.mark.parametrize(("name", "path"), all_urls())
def test_anonymous_visitors_are_sent_to_a_login(client, name, path):
    response = client.get(path)

    if name in PUBLIC:
        assert response.status_code == 200
    elif path.startswith("/api/"):
        assert response.status_code == 401
    elif path.startswith("/admin/"):
        assert response.status_code == 302
        assert response.url.startswith((reverse("admin:login"), reverse("login")))
    else:
        assert response.status_code == 302
        assert response.url.startswith(reverse("login") + "?next=")


@pytest.mark.parametrize(
    ("user_fixture", "landing"),
    [
        ("operator", "approvals:queue"),
        ("developer", "runs:threads"),
        ("administrator", "approvals:queue"),
    ],
)
def test_home_sends_each_role_to_its_screen(client, request, user_fixture, landing):
    client.force_login(request.getfixturevalue(user_fixture))

    response = client.get(reverse("home"))

    assert response.status_code == 302
    assert response.url == reverse(landing)


def test_a_user_without_a_role_sees_the_designed_forbidden_page(client, outsider):
    client.force_login(outsider)

    response = client.get(reverse("home"))

    assert response.status_code == 403
    assert b"You may not do this" in response.content
    assert b"no role yet" in response.content


def test_a_developer_may_not_open_the_approval_queue_of_operators_only_pages(
    client, developer, operator
):
    client.force_login(developer)
    assert client.get(reverse("runs:threads")).status_code == 200
    assert client.get(reverse("approvals:queue")).status_code == 200  # may view

    client.force_login(operator)
    assert client.get(reverse("approvals:queue")).status_code == 200


def test_the_outsider_sees_no_screen(client, outsider):
    client.force_login(outsider)

    for name in ("approvals:queue", "approvals:audit", "runs:threads"):
        response = client.get(reverse(name))
        assert response.status_code == 403
        assert b"You may not do this" in response.content


def test_the_api_schema_is_served_to_a_logged_in_user(client, developer):
    client.force_login(developer)

    response = client.get(reverse("api-schema"))

    assert response.status_code == 200


def test_the_api_accepts_a_token(client, developer):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=developer)

    response = client.get(
        reverse("api-schema"), HTTP_AUTHORIZATION=f"Token {token.key}"
    )

    assert response.status_code == 200


def test_the_layout_shows_the_role_s_navigation_and_a_logout_form(client, operator):
    client.force_login(operator)

    page = client.get(reverse("approvals:queue")).content.decode()

    assert 'href="#main"' in page
    assert 'aria-current="page"' in page
    assert 'action="/accounts/logout/"' in page and 'name="csrfmiddlewaretoken"' in page
    assert ">Admin<" not in page


def test_staff_see_the_admin_link(client, administrator):
    client.force_login(administrator)

    page = client.get(reverse("runs:threads")).content.decode()

    assert ">Admin<" in page


def test_logout_is_a_post(client, operator):
    client.force_login(operator)

    response = client.post(reverse("logout"))

    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 302


def test_an_unknown_page_shows_the_designed_not_found_page(client, operator):
    client.force_login(operator)

    response = client.get("/no/such/page/")

    assert response.status_code == 404
    assert b"Nothing here" in response.content


def test_pages_carry_the_security_headers(client, operator):
    client.force_login(operator)

    response = client.get(reverse("approvals:queue"))

    assert response.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_user_changes_their_password_on_a_console_page(client, operator):
    client.force_login(operator)

    form = client.get(reverse("password_change"))
    response = client.post(
        reverse("password_change"),
        {
            "old_password": "a-long-test-password",
            "new_password1": "another-long-passphrase-42",
            "new_password2": "another-long-passphrase-42",
        },
    )

    assert b'class="skip-link"' in form.content
    assert response.status_code == 302
    operator.refresh_from_db()
    assert operator.check_password("another-long-passphrase-42")


def test_a_form_without_its_csrf_token_gets_the_designed_expired_page(operator):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    response = client.post(reverse("logout"))

    assert response.status_code == 403
    assert b"This form has expired" in response.content
