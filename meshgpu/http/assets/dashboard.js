// The meshgpu dashboard: reads /dashboard/events (server-sent events, through fetch so a
// bearer token can be sent) and redraws; no page reloads, no libraries, no CDN.
"use strict";

const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b"];
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child === null || child === undefined ? "" : child);
  return node;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return seconds.toFixed(1) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function clock(at) {
  return new Date(at * 1000).toLocaleTimeString();
}

function fill(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
}

function renderMembers(status) {
  const rows = status.members.map((m) => {
    const load = m.load || {};
    const busy = m.load ? `${load.active_tasks} running, ${load.free_slots} free` +
      (load.utilisation ? `, ${Math.round(load.utilisation * 100)}% busy` : "") : "";
    const devices = (load.usable_devices && load.usable_devices.length)
      ? load.usable_devices.join(", ") : (load.devices || []).join(", ") || "none usable";
    const leader = m.node_id === status.leader ? " ★" : "";
    return el("tr", { "data-node": m.node_id, "data-state": m.state },
      el("td", { class: "mono" }, m.node_id + leader),
      el("td", { class: "state " + m.state }, m.state),
      el("td", {}, String(m.incarnation)),
      el("td", {}, ago(m.since_s)),
      el("td", { class: "mono" }, m.address.join(":")),
      el("td", {}, busy),
      el("td", {}, devices),
      el("td", { class: "note" }, m.state === "alive" ? "" : (m.reason || "")));
  });
  fill($("members"), rows);
}

function renderTasks(state) {
  $("queue").textContent = `${state.status.queue_length} queued · ` +
    Object.entries(state.status.tasks).map(([k, v]) => `${v} ${k}`).join(", ");
  fill($("tasks"), state.tasks.slice().reverse().slice(0, 20).map((t) => el("tr", {},
    el("td", { class: "mono" }, t.task_id), el("td", {}, t.state),
    el("td", { class: "mono" }, t.worker || ""), el("td", {}, String(t.attempt)))));
  fill($("recent"), state.recent.slice(0, 20).map((r) => el("tr", {},
    el("td", {}, clock(r.at)), el("td", {}, r.model),
    el("td", { class: "mono" }, r.worker || (r.ok ? "" : "failed")), el("td", {}, r.ms.toFixed(1)))));
  fill($("catalog"), state.catalog.map((c) => el("tr", {},
    el("td", {}, c.name), el("td", {}, c.version), el("td", { class: "mono" }, c.digest.slice(0, 16)))));
}

function renderTimeline(state) {
  $("timeline").replaceChildren(...state.timeline.map((e) =>
    el("li", { class: "kind-" + e.kind }, el("time", {}, clock(e.at)), e.text)));
}

function renderLatency(state) {
  const canvas = $("latency");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const series = Object.entries(state.latency);
  const points = series.flatMap(([, s]) => s);
  $("legend").replaceChildren(...series.map(([name], i) =>
    el("span", { style: `color:${COLORS[i % COLORS.length]}` }, "■ " + name)));
  if (!points.length) {
    g.fillStyle = "#6b7380";
    g.fillText("no inference requests yet", 10, 20);
    return;
  }
  const t1 = state.at, t0 = t1 - 120;
  const top = Math.max(1, ...points.map((p) => p[1])) * 1.1;
  const x = (t) => 40 + (canvas.width - 50) * (t - t0) / (t1 - t0);
  const y = (v) => canvas.height - 20 - (canvas.height - 30) * v / top;
  g.strokeStyle = "#e3e6eb";
  g.fillStyle = "#6b7380";
  for (const v of [0, top / 2, top]) {
    g.beginPath(); g.moveTo(40, y(v)); g.lineTo(canvas.width - 10, y(v)); g.stroke();
    g.fillText(v.toFixed(v < 10 ? 1 : 0), 4, y(v) + 4);
  }
  g.fillText("last 2 min", canvas.width - 70, canvas.height - 5);
  series.forEach(([, s], i) => {
    g.strokeStyle = COLORS[i % COLORS.length];
    g.lineWidth = 2;
    g.beginPath();
    s.filter((p) => p[0] >= t0).forEach((p, j) => (j ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
    g.stroke();
  });
}

function render(state) {
  const status = state.status;
  $("mesh").textContent = `mesh ${status.node.mesh} · this node ${status.node.node_id}`;
  $("leader").textContent = `leader ${status.leader || "none"} · view ${status.view}`;
  renderMembers(status);
  renderTasks(state);
  renderTimeline(state);
  renderLatency(state);
  document.body.dataset.updated = String(state.at);
}

function setLink(text, cls) {
  const badge = $("link");
  badge.textContent = text;
  badge.className = "badge " + (cls || "");
}

async function follow() {
  const token = sessionStorage.getItem("meshgpu-token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch("/dashboard/events", { headers });
  if (response.status === 401 || response.status === 403) {
    $("login").hidden = false;
    setLink("token needed", "lost");
    return false;
  }
  if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
  setLink("live", "live");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("stream ended");
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = message.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) render(JSON.parse(data));
    }
  }
}

async function loop() {
  for (;;) {
    try {
      if (await follow() === false) return;
    } catch (error) {
      setLink("reconnecting… (" + error.message + ")", "lost");
    }
    await new Promise((done) => setTimeout(done, 1000));
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("meshgpu-token", $("token").value);
  $("login").hidden = true;
  loop();
});
loop();
