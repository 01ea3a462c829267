// One board: the image with its candidate regions, a zoom on the selected region, and the
// decision by buttons or keys. A decision is sent once (the page's outcome id makes a
// double click the same outcome), then the next board in the queue opens.
(() => {
  const data = JSON.parse(document.getElementById("board-data").textContent);
  const base = "/boards/" + encodeURIComponent(data.event_id);
  const canvas = document.getElementById("board-canvas");
  const zoom = document.getElementById("zoom-canvas");
  const rows = [...document.querySelectorAll("#regions tbody tr[data-index]")];
  const status = document.getElementById("status");
  const buttons = [document.getElementById("good"), document.getElementById("defective")];
  const image = new Image();
  let selected = data.regions.length ? 0 : -1;
  let sent = false;

  function colour(r) {
    if (r.score >= data.fail_at_or_above) return "#ef4444";
    if (r.score >= data.pass_below) return "#f59e0b";
    return "#22c55e";
  }

  function draw() {
    if (!canvas || !image.complete || !image.naturalWidth) return;
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(image, 0, 0);
    const w = Math.max(2, image.naturalWidth / 300);
    data.regions.forEach((r, i) => {
      const b = r.box;
      ctx.lineWidth = i === selected ? w * 2 : w;
      ctx.strokeStyle = colour(r);
      ctx.strokeRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
      ctx.fillStyle = colour(r);
      ctx.font = `${Math.round(w * 7)}px sans-serif`;
      ctx.fillText(`${i + 1} ${r.defect_type || (data.untyped === "anomaly" ? "anomaly" : "ok")} ${r.score.toFixed(2)}`, b.x1, Math.max(10, b.y1 - w));
    });
    drawZoom();
  }

  function drawZoom() {
    const label = document.getElementById("zoom-label");
    const ctx = zoom.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, zoom.width, zoom.height);
    rows.forEach((tr, i) => tr.classList.toggle("selected", i === selected));
    if (selected < 0 || !image.naturalWidth) { label.textContent = "—"; return; }
    const r = data.regions[selected];
    const b = r.box;
    const side = Math.max(b.x2 - b.x1, b.y2 - b.y1) * 2 + 16;  // the region and its surroundings
    const cx = (b.x1 + b.x2) / 2, cy = (b.y1 + b.y2) / 2;
    const sx = cx - side / 2, sy = cy - side / 2;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, sx, sy, side, side, 0, 0, zoom.width, zoom.height);
    const k = zoom.width / side;
    ctx.strokeStyle = colour(r);
    ctx.lineWidth = 2;
    ctx.strokeRect((b.x1 - sx) * k, (b.y1 - sy) * k, (b.x2 - b.x1) * k, (b.y2 - b.y1) * k);
    label.textContent = `${selected + 1}: ${r.defect_type || data.untyped} ${r.score.toFixed(3)}`;
  }

  function select(i) {
    if (!data.regions.length) return;
    selected = (i + data.regions.length) % data.regions.length;
    draw();
  }

  if (canvas) {
    image.onload = draw;
    image.src = base + "/image";
    canvas.addEventListener("click", (e) => {
      const rect = canvas.getBoundingClientRect();
      const x = (e.clientX - rect.left) * canvas.width / rect.width;
      const y = (e.clientY - rect.top) * canvas.height / rect.height;
      const hit = data.regions.findIndex((r) => x >= r.box.x1 && x < r.box.x2 && y >= r.box.y1 && y < r.box.y2);
      if (hit >= 0) select(hit);
    });
  }
  rows.forEach((tr) => tr.addEventListener("click", () => select(Number(tr.dataset.index))));

  async function decide(defective) {
    if (sent) return;
    const types = [...document.querySelectorAll("input[name=types]:checked")].map((c) => c.value);
    if (defective && !types.length) { status.textContent = "Choose at least one defect type (1–6)."; return; }
    sent = true;
    buttons.forEach((b) => { b.disabled = true; });
    status.textContent = "Sending…";
    const body = {event_id: data.event_id, outcome_id: data.outcome_id, defective,
      defect_types: defective ? types : []};
    try {
      const response = await fetch("/api/reviews", {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.detail ? JSON.stringify(answer.detail) : response.status);
      status.textContent = `Recorded (${defective ? "defective" : "good"}).`;
      location.href = answer.next ? "/boards/" + encodeURIComponent(answer.next)
        : "/queue?line=" + encodeURIComponent(data.line);
    } catch (err) {
      // Not taken: the same outcome id may be sent again without making a second outcome.
      sent = false;
      buttons.forEach((b) => { b.disabled = false; });
      status.textContent = "Not recorded: " + err.message;
    }
  }

  document.getElementById("good").addEventListener("click", () => decide(false));
  document.getElementById("defective").addEventListener("click", () => decide(true));
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "INPUT" && e.target.type !== "checkbox") return;
    const key = e.key.toLowerCase();
    if (key === "g") decide(false);
    else if (key === "d") decide(true);
    else if (key === "n" || key === "arrowright") select(selected + 1);
    else if (key === "p" || key === "arrowleft") select(selected - 1);
    else if (key === "q" || key === "escape") location.href = "/queue?line=" + encodeURIComponent(data.line);
    else if (/^[1-6]$/.test(key)) {
      const box = document.querySelectorAll("input[name=types]")[Number(key) - 1];
      box.checked = !box.checked;
    } else return;
    e.preventDefault();
  });
})();
