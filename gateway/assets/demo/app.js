// The demo page: a room chat on the browser SDK as built (switchboard.js,
// served by this node), with the room's position, presence, the node's key
// metrics and buttons that break the connection to show recovery.
import { connect } from "/demo/switchboard.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
$("user").value = params.get("user") ?? `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
if (params.get("room")) $("room").value = params.get("room");

let client;
let room;
const present = new Set();

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(li);
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  $("messages").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function show(msg) {
  const li = document.createElement("li");
  li.dataset.offset = String(msg.offset);
  const offset = document.createElement("span");
  offset.className = "offset";
  offset.textContent = String(msg.offset);
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = msg.from;
  const body = document.createElement("span");
  body.className = "text";
  const data = msg.data;
  body.textContent = data && typeof data === "object" && typeof data.text === "string" ? data.text : JSON.stringify(data);
  li.append(offset, from, body);
  $("messages").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function showPosition() {
  const p = room?.position;
  $("epoch").textContent = p ? p.epoch : "-";
  $("offset").textContent = p ? String(p.offset) : "-";
  $("queued").textContent = String(client?.queued ?? 0);
}

function showPresence() {
  const ul = $("presence");
  ul.replaceChildren(
    ...[...present].sort().map((u) => {
      const li = document.createElement("li");
      li.textContent = u;
      return li;
    }),
  );
}

async function refreshPresence() {
  try {
    const users = await room.presence();
    present.clear();
    for (const u of users) present.add(u);
    showPresence();
  } catch (e) {
    log(`presence: ${e.message}`);
  }
}

function setState(state) {
  $("state").textContent = state;
  $("state").dataset.state = state;
  const live = state !== "idle";
  $("drop").disabled = !live;
  $("offline").disabled = !live;
}

function start() {
  const user = $("user").value.trim();
  const name = $("room").value.trim();
  if (!user || !name) return;
  client?.close();
  $("messages").replaceChildren();
  present.clear();
  showPresence();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const token = $("token").value.trim();
  // `?nodes=host:port,host:port`: the other nodes of a cluster to try
  // when this one drains or goes away.
  const nodes = (params.get("nodes") ?? location.host).split(",").filter(Boolean);
  const urls = nodes.map((n) => `${scheme}://${n}/ws?user=${encodeURIComponent(user)}`);
  client = connect(urls, token ? { token } : {});
  client.on("connecting", ({ attempt, transport }) => { setState("connecting"); log(`connecting over ${transport} (attempt ${attempt})`); });
  client.on("connected", ({ node, conn, transport }) => {
    setState("connected");
    $("node").textContent = node;
    log(`connected to ${node} as ${conn} over ${transport}`);
  });
  client.on("disconnected", ({ code, reason }) => { setState("waiting"); log(`disconnected ${code} ${reason}`); });
  client.on("reconnecting", ({ delay }) => log(`reconnecting in ${Math.round(delay)} ms`));
  client.on("error", (e) => log(`error: ${e.message}`));
  room = client.room(name);
  $("room-name").textContent = name;
  room.on("msg", (m) => { show(m); showPosition(); });
  room.on("joined", ({ user }) => { present.add(user); showPresence(); });
  room.on("left", ({ user }) => { present.delete(user); showPresence(); });
  room.on("recovery", ({ recovered, since, epoch, offset }) => {
    if (recovered) {
      log(`rejoined: recovered everything after ${since.offset}`);
    } else {
      notice(`history did not reach back to ${since.offset}: messages continue after ${offset} (epoch ${epoch})`);
      log("rejoined: recovered:false");
    }
    refreshPresence();
    showPosition();
  });
  room.on("reset", ({ epoch, offset }) => {
    notice(`the room's history restarted: messages continue after ${offset} (epoch ${epoch})`);
    log("reset");
    showPosition();
  });
  room.on("error", (e) => log(`room: ${e.message}`));
  room.join({ presence: true }).then(
    () => {
      $("text").disabled = false;
      $("send").disabled = false;
      refreshPresence();
      showPosition();
    },
    (e) => log(`join refused: ${e.message}`),
  );
}

$("join").addEventListener("click", start);
$("compose").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!text || !room) return;
  $("text").value = "";
  room.publish({ text }).then(
    () => showPosition(),
    (e) => notice(`not sent: ${e.message}`),
  );
  showPosition();
});
$("drop").addEventListener("click", () => client?.reconnect());
$("offline").addEventListener("click", () => client?.reconnect(5000));

const METRICS = [
  ["switchboard_connections", "connections"],
  ["switchboard_rooms", "rooms"],
  ["switchboard_cluster_nodes", "cluster nodes"],
  ["switchboard_messages_published_total", "published"],
  ["switchboard_messages_delivered_total", "delivered"],
  ["switchboard_room_handovers_total", "room hand-overs"],
  ["process_resident_memory_bytes", "RSS MiB"],
];

async function pollMetrics() {
  try {
    const text = await (await fetch("/metrics")).text();
    const sums = new Map();
    for (const line of text.split("\n")) {
      if (line.startsWith("#")) continue;
      const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
      if (m) sums.set(m[1], (sums.get(m[1]) ?? 0) + Number(m[3]));
    }
    const dl = $("metrics");
    dl.replaceChildren();
    for (const [name, label] of METRICS) {
      if (!sums.has(name)) continue;
      let v = sums.get(name);
      if (name === "process_resident_memory_bytes") v = (v / 1048576).toFixed(1);
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      dd.dataset.metric = name;
      dl.append(dt, dd);
    }
  } catch {
    // The node is away (a drop, a restart): the next poll tries again.
  }
  showPosition();
}
setInterval(pollMetrics, 2000);
pollMetrics();
