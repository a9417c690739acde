// vmworker fleet: live pages without a reload, and the replay buttons. No dependencies.
(function () {
  "use strict";
  const body = document.body;
  const dot = document.getElementById("live");
  const updated = document.getElementById("updated");
  const ticker = document.getElementById("ticker");
  const params = new URLSearchParams();
  if (body.dataset.host) params.set("host", body.dataset.host);
  if (body.dataset.vm) params.set("vm", body.dataset.vm);

  // Refresh the page's live parts (elements with data-live and an id) from a fresh render.
  let pending = null;
  async function refresh() {
    pending = null;
    try {
      const r = await fetch(location.href, { headers: { "X-Requested-With": "fleet" } });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      document.querySelectorAll("[data-live][id]").forEach((el) => {
        const fresh = doc.getElementById(el.id);
        const busy = [...el.querySelectorAll(".replay output")].some((o) => o.textContent);
        if (busy) return; // an operator is in the middle of a replay here: leave it
        if (fresh && fresh.innerHTML !== el.innerHTML) {
          el.replaceWith(fresh);
          fresh.classList.add("flash");
          wire(fresh);
        }
      });
      updated.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    } catch (e) { /* the next event or tick tries again */ }
  }
  function soon(ms) { if (!pending) pending = setTimeout(refresh, ms); }

  function tick(ev) {
    const li = document.createElement("li");
    const what = (ev.type || "").split(".").slice(-2).join(".");
    li.textContent = (ev.host || "?") + " " + what + (ev.phase ? " " + ev.phase : "");
    ticker.prepend(li);
    while (ticker.children.length > 6) ticker.lastChild.remove();
  }

  // One live stream per page, closed when the page goes (a page kept in the back-forward
  // cache would otherwise hold its connection: browsers allow only a few per server).
  let es = null;
  function connect() {
    if (!window.EventSource || es) return;
    es = new EventSource("/api/v1/stream?" + params.toString());
    es.addEventListener("hello", () => { dot.className = "live on"; dot.textContent = "live"; });
    es.addEventListener("stored", (e) => {
      try { tick(JSON.parse(e.data)); } catch (err) { /* not JSON: ignore */ }
      soon(400);
    });
    es.onerror = () => { dot.className = "live off"; dot.textContent = "reconnecting"; };
  }
  window.addEventListener("pagehide", () => { if (es) { es.close(); es = null; } });
  window.addEventListener("pageshow", (e) => { if (e.persisted) { connect(); soon(0); } });
  connect();
  // Hosts go late or down without any event: redraw now and then all the same.
  setInterval(() => soon(0), 10000);

  // Replay: a dry run first, then the real one; the token is asked once per tab.
  function token() {
    let t = sessionStorage.getItem("fleet-token");
    if (!t) {
      t = prompt("Bearer token for actions (fleet.token):");
      if (t) sessionStorage.setItem("fleet-token", t);
    }
    return t;
  }
  async function replay(box, dry) {
    const out = box.querySelector("output");
    const t = token();
    if (!t) return;
    out.className = "answer"; out.textContent = dry ? "dry run..." : "sending...";
    const r = await fetch("/api/v1/actions/replay", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + t },
      body: JSON.stringify({
        request_id: box.dataset.request, source: box.dataset.source,
        host: box.dataset.host || null, dry_run: dry, as_new: true,
      }),
    });
    const doc = await r.json().catch(() => ({}));
    if (!r.ok) {
      if (r.status === 401) sessionStorage.removeItem("fleet-token");
      out.className = "answer bad"; out.textContent = "refused: " + (doc.detail || r.status);
      return;
    }
    const rows = doc.replays || [];
    const said = rows.map((p) => (dry ? "would send " : "sent ") + (p.op || "?") + " to " +
      p.to_host + " as " + p.new_request_id).join("; ");
    out.className = "answer ok";
    out.textContent = (said || "nothing matched");
    const go = box.querySelector("button.go");
    if (dry && rows.length) { go.disabled = false; go.title = "send it"; }
    if (!dry) { go.disabled = true; soon(800); }
  }
  function wire(root) {
    root.querySelectorAll(".replay").forEach((box) => {
      if (box.dataset.wired) return;
      box.dataset.wired = "1";
      const dry = box.querySelector("button.dry"), go = box.querySelector("button.go");
      if (dry) dry.addEventListener("click", () => replay(box, true));
      if (go) go.addEventListener("click", () => replay(box, false));
    });
  }
  wire(document);
})();
