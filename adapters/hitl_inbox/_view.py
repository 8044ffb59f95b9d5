"""The inbox's pages, rendered on the server: the login form, the list of pending requests
(one card per request, each with its own decision form), and the cards alone for live
updates. Every outside text goes through `_html.h` / `escape`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import attrs

from ._decide import Form
from ._html import Html, h, join
from ._listing import AGES, Filters, Item, Listing

__all__ = ["Notice", "cards", "inbox_page", "login_page", "message_page"]

ARGUMENTS_SHOWN = 20_000
"""Characters of a tool call's arguments shown before "show all"."""


@attrs.frozen
class Notice:
    """A one-line message at the top of the page; `kind` is ok, late or error."""

    kind: str
    message: str


def _document(title: str, body: Html) -> Html:
    return h(
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="same-origin">'
        "<title>{title}</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/inbox.css">'
        '<script src="/static/inbox.js" defer></script>'
        "</head><body>{body}</body></html>\n",
        title=title,
        body=body,
    )


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = seconds // 86400
    return f"{days} day" + ("s" if days > 1 else "")


def _time(seconds: float) -> Html:
    moment = datetime.fromtimestamp(seconds, UTC)
    return h(
        '<time datetime="{iso}">{text}</time>',
        iso=moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        text=moment.strftime("%Y-%m-%d %H:%M UTC"),
    )


# -- the login page -------------------------------------------------------------------------


def login_page(csrf: str, *, error: str | None = None, name: str = "") -> Html:
    """The sign-in form: a name (recorded with every decision) and the password."""
    problem = h('<p class="error" role="alert" id="login-error">{e}</p>', e=error) if error else ""
    body = h(
        '<main class="login"><h1>Approval inbox</h1>'
        "<p>Sign in to decide what the agents are waiting for.</p>"
        '<form method="post" action="/login"{described}>'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<label for="name">Your name <span class="hint">(recorded with every decision'
        " you make)</span></label>"
        '<input id="name" name="name" autocomplete="username" required maxlength="80"'
        ' value="{name}" autofocus>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password"'
        " required>"
        "{problem}"
        '<button type="submit">Sign in</button></form></main>',
        described=Html(' aria-describedby="login-error"') if error else Html(""),
        csrf=csrf,
        name=name,
        problem=problem,
    )
    return _document("Sign in: approval inbox", body)


def message_page(title: str, message: str, *, link: str = "/", link_text: str = "Back") -> Html:
    """A short page for refusals (expired form, not signed in)."""
    return _document(
        title,
        h(
            '<main class="login"><h1>{title}</h1><p>{message}</p><p><a href="{link}">{text}</a>'
            "</p></main>",
            title=title,
            message=message,
            link=link,
            text=link_text,
        ),
    )


# -- the inbox page -------------------------------------------------------------------------


@attrs.frozen
class Context:
    """What every card's form needs: the CSRF token, the filters to come back to, and a
    submission to show again (its error and its values) after a refusal."""

    csrf: str
    filters: Filters
    errors: Mapping[str, str] = attrs.field(factory=dict)
    values: Mapping[str, Form] = attrs.field(factory=dict)


def _options(choices: Sequence[tuple[str, str]], current: str) -> Html:
    return join(
        h(
            '<option value="{v}"{sel}>{label}</option>',
            v=value,
            sel=Html(" selected") if value == current else Html(""),
            label=label,
        )
        for value, label in choices
    )


def _filters(listing: Listing, filters: Filters) -> Html:
    user_choices = listing.user_choices()
    if filters.user and filters.user not in dict(user_choices):
        user_choices.append((filters.user, filters.user[2:] or "(the account: no user)"))
    tool_choices = listing.tool_choices()
    if filters.tool and filters.tool not in dict(tool_choices):
        tool_choices.append((filters.tool, filters.tool[2:]))
    ages = [(str(seconds), label) for seconds, label in AGES]
    return h(
        '<form class="filters" method="get" action="/" role="search" aria-label="Filter requests">'
        '<label for="f-user">User</label><select id="f-user" name="user">{users}</select>'
        '<label for="f-tool">Tool</label><select id="f-tool" name="tool">{tools}</select>'
        '<label for="f-age">Age</label><select id="f-age" name="age">{ages}</select>'
        '<button type="submit">Filter</button>{clear}</form>',
        users=_options(user_choices, filters.user),
        tools=_options(tool_choices, filters.tool),
        ages=_options(ages, str(filters.age)),
        clear=Html('<a class="clear" href="/">Show all</a>') if filters.active else Html(""),
    )


def inbox_page(
    *,
    name: str,
    listing: Listing,
    context: Context,
    notice: Notice | None = None,
) -> Html:
    """The whole inbox: header, filters, notices, live log and the cards."""
    shown = listing.shown(context.filters)
    notice_html = (
        h(
            '<p id="notice" class="notice {kind}" role="{role}" tabindex="-1">{message}</p>',
            kind=notice.kind,
            role="alert" if notice.kind != "ok" else "status",
            message=notice.message,
        )
        if notice
        else ""
    )
    body = h(
        '<a class="skip" href="#cards">Skip to the requests</a>'
        '<header class="top"><h1>Approval inbox</h1>'
        '<div class="who"><span>Signed in as <strong>{name}</strong></span>'
        '<form method="post" action="/logout" class="logout">'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<button type="submit">Sign out</button></form></div></header>'
        "{filters}{notice}"
        '<div id="live" class="live" aria-live="polite" aria-relevant="additions"></div>'
        '<p id="connection" class="connection" hidden></p>'
        "<main>{cards}</main>",
        name=name,
        csrf=context.csrf,
        filters=_filters(listing, context.filters),
        notice=notice_html,
        cards=cards(listing, shown, context),
    )
    return _document(f"({listing.total}) Approval inbox", body)


def cards(listing: Listing, shown: list[Item], context: Context) -> Html:
    """The list of cards (also served alone, for live updates)."""
    if listing.total == 0:
        summary = h('<h2 id="summary">Nothing is waiting for a decision.</h2>')
    elif len(shown) == listing.total:
        summary = h(
            '<h2 id="summary">{n} waiting, oldest first</h2>',
            n=f"{listing.total} request" + ("s" if listing.total != 1 else ""),
        )
    else:
        summary = h(
            '<h2 id="summary">{n} of {total} waiting match the filters, oldest first</h2>',
            n=len(shown),
            total=listing.total,
        )
    more = (
        h('<p class="hint">Only the oldest {n} are listed.</p>', n=len(listing.items))
        if listing.truncated
        else ""
    )
    rendered = [
        _card(
            item,
            context,
            oldest=index == 0,
            following=shown[index + 1] if index + 1 < len(shown) else None,
        )
        for index, item in enumerate(shown)
    ]
    return h(
        '<section id="cards" tabindex="-1" aria-labelledby="summary" data-total="{total}">'
        "{summary}{more}{cards}</section>",
        total=listing.total,
        summary=summary,
        more=more,
        cards=join(rendered),
    )


def _badges(item: Item, oldest: bool) -> Html:
    badges = []
    if oldest:
        badges.append(h('<span class="badge oldest">Oldest</span>'))
    if item.suspended:
        badges.append(
            h(
                '<span class="badge suspended" title="The agent stopped waiting after {t}; a'
                ' decision restarts the run.">Suspended</span>',
                t=_age(item.run.input_timeout),
            )
        )
    return join(badges, " ")


def _meta(item: Item, oldest: bool) -> Html:
    request, run = item.request, item.run
    if request.kind == "tool":
        title = h('Tool call <code class="tool">{tool}</code>', tool=request.tool_name)
    elif request.kind == "plan":
        title = h("Plan, revision {n}", n=request.tool_input.get("revision", 1))
    else:
        count = len(request.questions)
        title = h("Question" if count == 1 else "{n} questions", n=count)
    return h(
        '<div class="meta"><h3 id="h-{rid}">{title} {badges}</h3>'
        '<p class="facts">Run <code>{run}</code> · user <strong>{user}</strong>'
        ' · waiting <span class="age">{age}</span> (since {since})</p></div>',
        rid=request.request_id,
        title=title,
        badges=_badges(item, oldest),
        run=run.id,
        user=run.user_id if run.user_id is not None else "(account)",
        age=_age(item.age),
        since=_time(request.created_at),
    )


def _hidden(context: Context, following: Item | None) -> Html:
    return h(
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<input type="hidden" name="back" value="{back}">'
        '<input type="hidden" name="next" value="{next}">'
        # Enter in a text field submits with the form's first button: a disabled one here
        # makes Enter do nothing, so nobody allows a call by pressing Enter in "reason".
        '<button type="submit" class="sink" disabled tabindex="-1" aria-hidden="true"></button>',
        csrf=context.csrf,
        back=context.filters.query(),
        next=following.request.request_id if following else "",
    )


def _error(request_id: str, context: Context) -> Html:
    message = context.errors.get(request_id)
    if not message:
        return Html("")
    return h(
        '<p class="error" role="alert" id="e-{rid}">{m}</p>',
        rid=request_id,
        m=message[:1].upper() + message[1:],
    )


def _card(item: Item, context: Context, *, oldest: bool, following: Item | None) -> Html:
    request = item.request
    classes = ["card", "card-" + request.kind]
    if oldest:
        classes.append("is-oldest")
    if item.suspended:
        classes.append("is-suspended")
    body = {"tool": _tool_form, "plan": _plan_form}.get(request.kind, _question_form)(
        item, context, following
    )
    return h(
        '<article class="{classes}" id="c-{rid}" tabindex="-1" aria-labelledby="h-{rid}"'
        ' data-request="{rid}" data-run="{run}">{meta}{body}</article>',
        classes=" ".join(classes),
        rid=request.request_id,
        run=request.run_id,
        meta=_meta(item, oldest),
        body=body,
    )


def _form_open(item: Item, context: Context, following: Item | None) -> Html:
    rid = item.request.request_id
    return h(
        '<form class="decide" method="post" action="/decide/{run}/{rid}"{described}>{hidden}',
        run=item.request.run_id,
        rid=rid,
        described=h(' aria-describedby="e-{rid}"', rid=rid) if rid in context.errors else "",
        hidden=_hidden(context, following),
    )


def _tool_form(item: Item, context: Context, following: Item | None) -> Html:
    request, run = item.request, item.run
    rid = request.request_id
    values = context.values.get(rid, Form(()))
    arguments = json.dumps(request.tool_input, indent=2, ensure_ascii=False, sort_keys=True)
    if len(arguments) > ARGUMENTS_SHOWN:
        shown_args = h(
            '<pre class="args">{head}</pre><details><summary>Show all {n} characters</summary>'
            '<pre class="args">{all}</pre></details>',
            head=arguments[:ARGUMENTS_SHOWN] + "\n\u2026",
            n=len(arguments),
            all=arguments,
        )
    else:
        shown_args = h('<pre class="args">{a}</pre>', a=arguments)
    scope = f"user {run.user_id}" if run.user_id is not None else "the account"
    return h(
        '<h4 class="label">Arguments</h4>{args}{open}'
        '<label for="reason-{rid}">Reason <span class="hint">(optional; the agent reads'
        " it)</span></label>"
        '<input id="reason-{rid}" name="reason" type="text" value="{reason}" autocomplete="off">'
        '<label class="check"><input type="checkbox" name="remember" value="1"{checked}>'
        ' Remember for later calls of <code>{tool}</code> <span class="hint">(allow: also in'
        " later runs of {scope}; deny: for the rest of this run)</span></label>"
        "{error}"
        '<div class="actions">'
        '<button type="submit" name="decision" value="allow" class="allow">Allow</button>'
        '<button type="submit" name="decision" value="deny" class="deny">Deny</button>'
        "</div></form>",
        args=shown_args,
        open=_form_open(item, context, following),
        rid=rid,
        reason=values.get("reason"),
        checked=Html(" checked") if values.get("remember") == "1" else Html(""),
        tool=request.tool_name,
        scope=scope,
        error=_error(rid, context),
    )


def _question_form(item: Item, context: Context, following: Item | None) -> Html:
    request = item.request
    rid = request.request_id
    values = context.values.get(rid, Form(()))
    fieldsets = []
    for index, question in enumerate(request.questions):
        multi = question["multiSelect"]
        field = f"q{index}"
        ticked = set(values.all(field))
        options = join(
            h(
                '<label class="option"><input type="{type}" name="{field}" value="{i}"{checked}>'
                ' <span class="option-label">{label}</span>{description}</label>',
                type="checkbox" if multi else "radio",
                field=field,
                i=number,
                checked=Html(" checked") if str(number) in ticked else Html(""),
                label=option["label"],
                description=(
                    h(' <span class="option-description">{d}</span>', d=option["description"])
                    if option["description"]
                    else ""
                ),
            )
            for number, option in enumerate(question["options"])
        )
        other_id = f"o{index}-{rid}"
        fieldsets.append(
            h(
                '<fieldset class="question"><legend>{header}<span class="question-text">{text}'
                '</span></legend><p class="hint">{how}</p>{options}'
                '<label for="{oid}" class="other">{other_label}</label>'
                '<input id="{oid}" name="{field}.other" type="text" value="{other}"'
                ' autocomplete="off"></fieldset>',
                header=(
                    h('<span class="header">{x}</span> ', x=question["header"])
                    if question["header"]
                    else ""
                ),
                text=question["question"],
                how="Choose any that apply." if multi else "Choose one.",
                options=options,
                oid=other_id,
                other_label=(
                    "Or add your own answer:" if multi else "Or type your own answer instead:"
                ),
                field=field,
                other=values.get(field + ".other"),
            )
        )
    return h(
        "{open}{fieldsets}{error}"
        '<div class="actions"><button type="submit" name="decision" value="answer"'
        ' class="allow">Send {what}</button></div></form>',
        open=_form_open(item, context, following),
        fieldsets=join(fieldsets),
        error=_error(rid, context),
        what="answer" if len(fieldsets) == 1 else "answers",
    )


def _plan_form(item: Item, context: Context, following: Item | None) -> Html:
    request = item.request
    rid = request.request_id
    values = context.values.get(rid, Form(()))
    previous = (
        h(
            '<p class="previous">Feedback on the previous revision: <q>{f}</q></p>',
            f=item.previous_feedback,
        )
        if item.previous_feedback
        else ""
    )
    return h(
        '<h4 class="label">The plan</h4><pre class="plan">{plan}</pre>{previous}{open}'
        '<div class="actions"><button type="submit" name="decision" value="approve"'
        ' class="allow">Approve plan</button></div>'
        '<label for="feedback-{rid}">Or say what should change'
        ' <span class="hint">(the agent revises the plan)</span></label>'
        '<textarea id="feedback-{rid}" name="feedback" rows="3">{feedback}</textarea>'
        "{error}"
        '<div class="actions"><button type="submit" name="decision" value="revise"'
        ' class="revise">Ask for a revision</button></div></form>',
        plan=request.plan_text or "",
        previous=previous,
        open=_form_open(item, context, following),
        rid=rid,
        feedback=values.get("feedback"),
        error=_error(rid, context),
    )
