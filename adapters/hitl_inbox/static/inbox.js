// hitl inbox: live updates on top of a page that works without JavaScript.
// - server-sent events from /events say that something changed; the cards are then
//   fetched again from /cards and merged: decided cards leave, new ones come in, and the
//   card being typed in is never touched;
// - who decided a card elsewhere is announced (as text, never as HTML);
// - focus lands on the next card after a decision; j / k move between cards.
"use strict";

(function () {
  const cards = () => document.getElementById("cards");
  const live = document.getElementById("live");
  const connection = document.getElementById("connection");
  const resolved = new Map(); // request id -> the event that resolved it
  let timer = null;
  let source = null;

  function say(text, className) {
    if (!live) return;
    const line = document.createElement("p");
    line.textContent = text;
    if (className) line.className = className;
    live.prepend(line);
    while (live.children.length > 5) live.lastElementChild.remove();
  }

  function titleOf(card) {
    const heading = card.querySelector("h3");
    const clone = heading ? heading.cloneNode(true) : null;
    if (!clone) return "A request";
    clone.querySelectorAll(".badge").forEach((badge) => badge.remove());
    return clone.textContent.replace(/\s+/g, " ").trim();
  }

  function how(event) {
    if (!event) return "is no longer waiting";
    if (event.source === "run_ended") return "was cancelled: its run ended";
    if (event.source === "mode_switch") return "was allowed by a switch to autonomous mode";
    const by = event.actor ? "by " + event.actor : "by someone who gave no name";
    if (event.decision === "approve") return "was approved " + by;
    if (event.decision === "revise") return "was sent back for a revision " + by;
    if (event.status) return "was " + event.status + " " + by;
    return "is no longer waiting";
  }

  function removeCard(card) {
    const event = resolved.get(card.dataset.request);
    say(titleOf(card) + " (run " + card.dataset.run + ") " + how(event) + ".");
    if (card.contains(document.activeElement)) {
      const next = card.nextElementSibling || card.previousElementSibling;
      (next && next.matches("article.card") ? next : cards()).focus();
    }
    card.remove();
  }

  function merge(fresh) {
    const current = cards();
    if (!current || !fresh) return;
    const freshCards = Array.from(fresh.querySelectorAll("article.card"));
    const keep = new Set(freshCards.map((card) => card.id));
    for (const card of Array.from(current.querySelectorAll("article.card"))) {
      if (!keep.has(card.id)) removeCard(card);
    }
    const summary = fresh.querySelector("#summary");
    if (summary) current.querySelector("#summary").textContent = summary.textContent;
    current.dataset.total = fresh.dataset.total;
    document.title = document.title.replace(/^\(\d+\)/, "(" + fresh.dataset.total + ")");
    let anchor = current.querySelector("#summary");
    for (const card of freshCards) {
      let mine = document.getElementById(card.id);
      if (mine) {
        mine.className = card.className;
        mine.querySelector(".meta").replaceWith(document.importNode(card.querySelector(".meta"), true));
        const next = mine.querySelector("input[name=next]");
        const freshNext = card.querySelector("input[name=next]");
        if (next && freshNext) next.value = freshNext.value;
      } else {
        mine = document.importNode(card, true);
        say("New: " + titleOf(mine) + " (run " + mine.dataset.run + ").");
      }
      if (anchor.nextElementSibling !== mine) anchor.after(mine);
      anchor = mine;
    }
  }

  async function refresh() {
    timer = null;
    let response;
    try {
      response = await fetch("/cards" + location.search, { credentials: "same-origin" });
    } catch (error) {
      return;
    }
    if (response.status === 401) {
      stopped("You have been signed out: reload the page to sign in again.");
      return;
    }
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    merge(doc.getElementById("cards"));
  }

  function soon() {
    if (timer === null) timer = setTimeout(refresh, 100);
  }

  function stopped(text) {
    if (source) source.close();
    if (connection) {
      connection.textContent = text;
      connection.hidden = false;
    }
  }

  function listen() {
    source = new EventSource("/events");
    source.addEventListener("change", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (event.type === "request.resolved" && event.request_id) resolved.set(event.request_id, event);
      soon();
    });
    source.addEventListener("open", () => {
      if (connection) connection.hidden = true;
      soon(); // catch up on whatever happened while disconnected
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        stopped("Live updates stopped: reload the page.");
      }
    });
  }

  function focusOnLoad() {
    const error = document.querySelector("article.card .error");
    if (error) {
      const card = error.closest("article.card");
      const field = card.querySelector("input:not([type=hidden]), textarea, select");
      (field || card).focus();
      return;
    }
    if (location.hash.startsWith("#c-")) {
      const card = document.getElementById(location.hash.slice(1));
      (card || cards()).focus();
      return;
    }
    const notice = document.getElementById("notice");
    if (notice && cards()) cards().focus();
  }

  // One answer per single-choice question: typing your own unticks the choices, and a
  // choice clears what was typed (the server takes typed text first).
  function exclusiveOther(event) {
    const target = event.target;
    if (!(target instanceof HTMLInputElement)) return;
    const fieldset = target.closest("fieldset.question");
    if (!fieldset || !fieldset.querySelector("input[type=radio]")) return;
    if (target.type === "text" && target.value.trim()) {
      fieldset.querySelectorAll("input[type=radio]").forEach((radio) => (radio.checked = false));
    } else if (target.type === "radio" && target.checked) {
      const other = fieldset.querySelector("input[type=text]");
      if (other) other.value = "";
    }
  }

  function typing(element) {
    return element && (element.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(element.tagName));
  }

  function moveBetweenCards(event) {
    if (event.altKey || event.ctrlKey || event.metaKey || typing(document.activeElement)) return;
    if (event.key !== "j" && event.key !== "k") return;
    const all = Array.from(document.querySelectorAll("article.card"));
    if (!all.length) return;
    const at = all.findIndex((card) => card.contains(document.activeElement));
    const to = event.key === "j" ? (at < 0 ? 0 : Math.min(at + 1, all.length - 1)) : Math.max(at - 1, 0);
    all[to].focus();
    event.preventDefault();
  }

  if (cards()) {
    focusOnLoad();
    document.addEventListener("input", exclusiveOther);
    document.addEventListener("change", exclusiveOther);
    document.addEventListener("keydown", moveBetweenCards);
    if (window.EventSource) listen();
    setInterval(soon, 30000); // ages and suspensions move on with the clock
  }
})();
