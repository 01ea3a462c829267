// The queue updates without a reload: it asks /api/review-queue every few seconds.
(() => {
  const table = document.getElementById("queue");
  const body = table.querySelector("tbody");
  const line = table.dataset.line;
  const every = Number(table.dataset.refreshMs) || 3000;
  const start = document.getElementById("start");

  const cell = (text, cls) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  };

  function render(rows) {
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.dataset.eventId = r.event_id;
      const link = document.createElement("a");
      link.href = "/boards/" + encodeURIComponent(r.event_id);
      link.textContent = r.board_serial;
      const serial = document.createElement("td");
      serial.append(link);
      tr.append(cell(r.decided_at), cell(r.line), serial, cell(r.product), cell(r.why),
        cell(r.verdict, "v-" + r.verdict), cell(r.board_score.toFixed(3)), cell(r.n_regions));
      body.append(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell("Nothing awaits review.");
      td.colSpan = 8;
      tr.append(td);
      body.append(tr);
    }
    document.getElementById("queue-count").textContent = rows.length;
    start.href = rows.length ? "/boards/" + encodeURIComponent(rows[0].event_id) : "#";
    document.getElementById("queue-updated").textContent =
      "Updated " + new Date().toLocaleTimeString() + ".";
  }

  async function refresh() {
    try {
      const query = new URLSearchParams({limit: "100"});
      if (line) query.set("line", line);
      const response = await fetch("/api/review-queue?" + query, {credentials: "same-origin"});
      if (response.status === 401) { location.href = "/login?next=/queue"; return; }
      if (response.ok) render(await response.json());
    } finally {
      setTimeout(refresh, every);
    }
  }
  setTimeout(refresh, every);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && start.getAttribute("href") !== "#") location.href = start.href;
  });
})();
