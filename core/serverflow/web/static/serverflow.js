/* ServerFlow dashboard: live updates over /live and changes through the REST API.
 *
 * No framework and nothing loaded from elsewhere. Texts come from _(), which the page
 * translates (sf-config); data is always inserted with textContent, never as HTML.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("sf-config").textContent || "{}");
  const messages = config.messages || {};
  const locale = config.locale || "en";
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";

  function _(text) {
    return Object.prototype.hasOwnProperty.call(messages, text) ? messages[text] : text;
  }

  function format(text, values) {
    return text.replace(new RegExp("%\\((\\w+)\\)s", "g"), function (match, key) {
      return Object.prototype.hasOwnProperty.call(values, key) ? String(values[key]) : match;
    });
  }

  // -- formatting ---------------------------------------------------------------------

  const percentFormat = new Intl.NumberFormat(locale, {
    style: "percent",
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
  });
  const dateFormat = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "medium" });
  const secondsFormat = new Intl.NumberFormat(locale, { maximumFractionDigits: 1 });

  function percent(value) {
    return typeof value === "number" && isFinite(value) ? percentFormat.format(value / 100) : "–";
  }

  function when(iso) {
    const date = new Date(iso);
    return isNaN(date.getTime()) ? "" : dateFormat.format(date);
  }

  function duration(ms) {
    if (typeof ms !== "number") return "–";
    return format(_("%(seconds)s s"), { seconds: secondsFormat.format(ms / 1000) });
  }

  function el(tag, attrs) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      const value = attrs[name];
      if (value === null || value === undefined || value === false) return;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    });
    for (let i = 2; i < arguments.length; i++) {
      const child = arguments[i];
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function timeElement(iso) {
    return iso ? el("time", { datetime: iso }, when(iso)) : el("span", { class: "muted" }, _("never"));
  }

  function localizeTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (node) {
      const text = when(node.getAttribute("datetime"));
      if (text) node.textContent = text;
    });
  }

  const STATUS = {
    pending: _("Waiting for the agent"),
    online: _("Online"),
    offline: _("Offline"),
    queued: _("Queued"),
    running: _("Running"),
    live: _("Live"),
    failed: _("Failed"),
    superseded: _("Superseded"),
    none: _("Not deployed"),
  };
  const KINDS = { deploy: _("Deployment"), rollback: _("Rollback"), config: _("Config change") };
  const ROLES = { viewer: _("Viewer"), member: _("Member"), admin: _("Admin"), owner: _("Owner") };
  const REASONS = { disconnected: _("disconnected"), "no heartbeat": _("no heartbeat") };

  function word(table, value) {
    return Object.prototype.hasOwnProperty.call(table, value) ? table[value] : String(value);
  }

  function badge(value) {
    return el("span", { class: "status " + value, "data-field": "status" }, word(STATUS, value));
  }

  function setStatus(node, value) {
    if (!node) return;
    node.className = "status " + value;
    node.textContent = word(STATUS, value);
  }

  function describe(event, serverName) {
    const data = event.data || {};
    const server = data.name || serverName || "";
    const by = data.by || "";
    switch (event.kind) {
      case "server.online":
        return format(_("%(server)s came online"), { server: server });
      case "server.offline":
        return format(_("%(server)s went offline (%(reason)s)"), {
          server: server,
          reason: word(REASONS, data.reason || ""),
        });
      case "agent.registered":
        return format(_("The agent of %(server)s registered"), { server: server });
      case "agent.key_rotated":
        return format(_("The agent of %(server)s rotated its key"), { server: server });
      case "deployment.started":
        if (data.kind === "rollback") {
          return format(_("Rollback of %(app)s started on %(server)s"), {
            app: data.app,
            server: serverName || "",
          });
        }
        return format(_("Deployment of %(app)s started on %(server)s"), {
          app: data.app,
          server: serverName || "",
        });
      case "deployment.finished":
        return format(_("Deployment of %(app)s on %(server)s: %(status)s"), {
          app: data.app,
          server: serverName || "",
          status: word(STATUS, data.status),
        });
      case "plugin.installed":
        return format(_("Plugin %(name)s installed by %(by)s"), { name: data.name, by: by });
      case "plugin.enabled":
        return format(_("Plugin %(name)s enabled by %(by)s"), { name: data.name, by: by });
      case "plugin.disabled":
        return format(_("Plugin %(name)s disabled by %(by)s"), { name: data.name, by: by });
      default:
        return server
          ? format(_("%(kind)s on %(server)s"), { kind: event.kind, server: server })
          : event.kind;
    }
  }

  // -- feedback -------------------------------------------------------------------------

  let toastTimer = null;
  function toast(text) {
    const node = document.getElementById("toast");
    if (!node) return;
    node.textContent = text;
    node.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () {
      node.classList.remove("show");
    }, 5000);
  }

  function confirmAction(text, okLabel) {
    const dialog = document.getElementById("confirm");
    if (!dialog || typeof dialog.showModal !== "function") {
      return Promise.resolve(window.confirm(text));
    }
    const opener = document.activeElement;
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = okLabel || _("Confirm");
    dialog.returnValue = "";
    return new Promise(function (resolve) {
      dialog.addEventListener(
        "close",
        function () {
          if (opener && typeof opener.focus === "function") opener.focus();
          resolve(dialog.returnValue === "confirm");
        },
        { once: true }
      );
      dialog.showModal();
      document.getElementById("confirm-cancel").focus();
    });
  }

  // -- the REST API ---------------------------------------------------------------------

  function ApiError(status, body) {
    this.status = status;
    this.code = (body && body.code) || "HTTP" + status;
    this.apiMessage = (body && body.message) || "";
    this.details = body && body.details;
  }

  async function api(method, path, body) {
    const init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (method !== "GET") init.headers["X-CSRF-Token"] = csrf;
    let response;
    try {
      response = await fetch("/api/v1" + path, init);
    } catch (err) {
      throw new ApiError(0, { code: "NET", message: "" });
    }
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch (err) {
        data = null;
      }
    }
    if (!response.ok) throw new ApiError(response.status, data && data.error);
    return data;
  }

  function errorText(err) {
    if (!(err instanceof ApiError)) return _("Something went wrong; try again.");
    if (err.code === "NET") return _("The control plane cannot be reached; check your connection.");
    const translated = (config.errors || {})[err.code];
    let text = translated || err.apiMessage || _("Something went wrong; try again.");
    if (translated && Array.isArray(err.details)) {
      const fields = err.details.map(function (d) { return d.field; }).filter(Boolean);
      if (fields.length) text += " (" + fields.join(", ") + ")";
    }
    return text;
  }

  function showError(node, err) {
    if (!node) return;
    node.textContent = typeof err === "string" ? err : errorText(err);
    node.dataset.code = err instanceof ApiError ? err.code : "";
    node.hidden = false;
  }

  // The non-empty lines of a textarea, trimmed (build steps, domains, env pairs).
  function lines(text) {
    return text
      .split("\n")
      .map(function (line) { return line.trim(); })
      .filter(Boolean);
  }

  function hideError(node) {
    if (node) {
      node.hidden = true;
      node.textContent = "";
    }
  }

  async function busy(button, work) {
    const label = button.textContent;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      return await work();
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
      button.textContent = label;
    }
  }

  // -- the live channel -----------------------------------------------------------------

  const live = {
    handlers: [],
    followed: new Set(),
    socket: null,
    attempts: 0,
    on: function (handler) {
      this.handlers.push(handler);
    },
    send: function (message) {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) {
        this.socket.send(JSON.stringify(message));
      }
    },
    follow: function (id) {
      this.followed.add(id);
      this.send({ follow: id });
    },
    unfollow: function (id) {
      this.followed.delete(id);
      this.send({ unfollow: id });
    },
    dispatch: function (event) {
      this.handlers.forEach(function (handler) {
        try {
          handler(event);
        } catch (err) {
          console.error(err);
        }
      });
    },
    state: function (state) {
      const node = document.getElementById("live-state");
      if (!node) return;
      node.dataset.state = state;
      node.textContent =
        state === "on" ? _("Live updates on") : state === "off" ? _("Reconnecting…") : _("Connecting…");
    },
    connect: function () {
      const self = this;
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const socket = new WebSocket(scheme + location.host + "/live");
      self.socket = socket;
      self.state("connecting");
      socket.onmessage = function (message) {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (err) {
          return;
        }
        if (event.kind === "live.ready") {
          self.attempts = 0;
          self.state("on");
          self.followed.forEach(function (id) {
            self.send({ follow: id });
          });
        }
        self.dispatch(event);
      };
      socket.onclose = function (close) {
        if (close.code === 4401) {
          location.assign("/login?next=" + encodeURIComponent(location.pathname));
          return;
        }
        self.state("off");
        const delay = Math.min(10000, 500 * Math.pow(2, self.attempts++));
        setTimeout(function () {
          self.connect();
        }, delay);
      };
    },
  };

  // -- pieces shared by pages -----------------------------------------------------------

  function updateMetrics(container, metrics) {
    if (!container || !metrics) return;
    const values = {
      cpu: metrics.cpu_percent,
      memory: metrics.memory && metrics.memory.percent,
      disk: metrics.disk && metrics.disk.percent,
    };
    Object.keys(values).forEach(function (name) {
      const cell = container.querySelector('[data-metric="' + name + '"]');
      if (!cell) return;
      const value = values[name];
      const meter = cell.querySelector("meter");
      if (meter && typeof value === "number") meter.value = value;
      const text = cell.querySelector("[data-value]");
      if (text) {
        const shown = percent(value);
        if (text.textContent !== shown) text.textContent = shown;
      }
    });
  }

  function serverRow(id) {
    return document.querySelector('tr[data-server-id="' + CSS.escape(id || "") + '"]');
  }

  function wireCopyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", async function () {
        const source = document.getElementById(button.dataset.copy);
        const text = source ? source.textContent : "";
        try {
          await navigator.clipboard.writeText(text);
          toast(_("Copied."));
        } catch (err) {
          const range = document.createRange();
          range.selectNodeContents(source);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          toast(_("Selected: press Ctrl+C to copy."));
        }
      });
    });
  }

  function wireRevealButtons() {
    document.querySelectorAll("[data-reveal]").forEach(function (button) {
      button.addEventListener("click", function () {
        const target = document.getElementById(button.dataset.reveal);
        if (!target) return;
        target.hidden = !target.hidden;
        button.setAttribute("aria-expanded", String(!target.hidden));
        button.textContent = target.hidden ? _("Show the secret") : _("Hide the secret");
      });
    });
  }

  function showInstall(install) {
    const card = document.getElementById("install");
    document.getElementById("install-command").textContent = install.command;
    document.getElementById("install-expiry").textContent = format(_("It expires on %(time)s."), {
      time: when(install.expires_at),
    });
    card.hidden = false;
    document.getElementById("install-title").focus();
  }

  // -- pages ----------------------------------------------------------------------------

  function overviewPage() {
    const servers = document.getElementById("servers");
    async function addServerRow(id) {
      if (!servers || serverRow(id)) return;
      try {
        const server = await api("GET", "/servers/" + encodeURIComponent(id));
        if (serverRow(id)) return;
        const row = el(
          "tr",
          { "data-server-id": server.id },
          el("th", { scope: "row" }, el("a", { href: "/servers/" + server.id }, server.name)),
          el("td", null, badge(server.status))
        );
        ["cpu", "memory", "disk"].forEach(function (name) {
          row.append(
            el(
              "td",
              { class: "metric", "data-metric": name },
              el("meter", { min: 0, max: 100, low: 70, high: 90, optimum: 10, value: 0, "aria-hidden": "true" }),
              " ",
              el("span", { "data-value": "" }, "–")
            )
          );
        });
        row.append(el("td", { "data-field": "last-seen" }, timeElement(server.last_seen_at)));
        servers.tBodies[0].append(row);
        updateMetrics(row, server.metrics);
      } catch (err) {
        console.error(err);
      }
    }
    live.on(function (event) {
      if (event.kind === "server.online" || event.kind === "server.offline") {
        const row = serverRow(event.server_id);
        if (!row) return addServerRow(event.server_id);
        setStatus(row.querySelector("[data-field=status]"), event.kind === "server.online" ? "online" : "offline");
      } else if (event.kind === "server.metrics") {
        const row = serverRow(event.server_id);
        if (!row) return addServerRow(event.server_id);
        updateMetrics(row, event.data);
        const seen = row.querySelector("[data-field=last-seen]");
        if (seen) seen.replaceChildren(timeElement(event.at));
      } else if (event.kind === "deployment.started" || event.kind === "deployment.finished") {
        const row = document.querySelector('tr[data-app-name="' + CSS.escape(event.data.app || "") + '"]');
        if (!row) return;
        const status = event.kind === "deployment.started" ? "running" : event.data.status;
        if (status === "live") row.dataset.hasLive = "1";
        let state = status;
        if (status !== "live" && status !== "running") state = row.dataset.hasLive === "1" ? "live" : "failed";
        setStatus(row.querySelector("[data-field=status]"), state);
        const last = row.querySelector("[data-field=last-status]");
        if (last) last.textContent = word(STATUS, status);
      }
    });
  }

  function serverNewPage() {
    const form = document.getElementById("server-form");
    const error = document.getElementById("server-error");
    const status = document.getElementById("install-status");
    let serverId = null;

    function online() {
      setStatus(status, "online");
      const link = document.getElementById("install-link");
      link.setAttribute("href", "/servers/" + serverId);
      document.getElementById("install-next").hidden = false;
      toast(_("The agent is connected: the server is online."));
    }

    form.addEventListener("submit", async function (submit) {
      submit.preventDefault();
      hideError(error);
      const name = form.elements.name;
      if (!name.checkValidity()) {
        showError(error, _("Use lowercase letters, digits and hyphens (like web-1)."));
        name.focus();
        return;
      }
      const button = form.querySelector("button[type=submit]");
      await busy(button, async function () {
        try {
          const made = await api("POST", "/servers", {
            name: name.value,
            description: form.elements.description.value,
            security_mode: form.elements.security_mode.value,
          });
          serverId = made.id;
          form.closest("section").hidden = true;
          setStatus(status, made.status);
          showInstall(made.install);
        } catch (err) {
          showError(error, err);
        }
      });
    });

    live.on(async function (event) {
      if (!serverId) return;
      if (event.kind === "server.online" && event.server_id === serverId) {
        online();
      } else if (event.kind === "live.ready") {
        // Reconnected: catch up with anything missed meanwhile.
        try {
          const server = await api("GET", "/servers/" + serverId);
          if (server.status === "online") online();
        } catch (err) {
          console.error(err);
        }
      }
    });
  }

  function drawChart(svg, points) {
    const ns = "http://www.w3.org/2000/svg";
    const width = 600;
    const height = 160;
    svg.replaceChildren();
    [25, 50, 75].forEach(function (level) {
      const y = height - (level / 100) * height;
      const line = document.createElementNS(ns, "line");
      line.setAttribute("x1", "0");
      line.setAttribute("x2", String(width));
      line.setAttribute("y1", String(y));
      line.setAttribute("y2", String(y));
      line.setAttribute("class", "grid");
      svg.append(line);
    });
    if (points.length === 0) return;
    const step = points.length > 1 ? width / (points.length - 1) : 0;
    ["cpu", "memory", "disk"].forEach(function (name) {
      const coords = [];
      points.forEach(function (point, i) {
        const value = point[name];
        if (typeof value !== "number") return;
        const y = height - (Math.max(0, Math.min(100, value)) / 100) * height;
        coords.push((i * step).toFixed(1) + "," + y.toFixed(1));
      });
      if (coords.length === 0) return;
      if (coords.length === 1) coords.push(width + "," + coords[0].split(",")[1]);
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", coords.join(" "));
      line.setAttribute("class", "series " + name);
      svg.append(line);
    });
    const latest = points[points.length - 1];
    svg.setAttribute(
      "aria-label",
      format(_("Latest of %(count)s heartbeats: CPU %(cpu)s, memory %(memory)s, disk %(disk)s"), {
        count: points.length,
        cpu: percent(latest.cpu),
        memory: percent(latest.memory),
        disk: percent(latest.disk),
      })
    );
  }

  function point(metrics) {
    return {
      cpu: metrics.cpu_percent,
      memory: metrics.memory && metrics.memory.percent,
      disk: metrics.disk && metrics.disk.percent,
    };
  }

  function serverPage() {
    const head = document.getElementById("server-head");
    const id = head.dataset.serverId;
    const svg = document.getElementById("metrics-chart");
    const figures = document.querySelector(".figures");
    const timeline = document.getElementById("timeline");
    const error = document.getElementById("server-error");
    const points = [];
    const limit = 120;

    api("GET", "/servers/" + id + "/heartbeats?limit=" + limit)
      .then(function (data) {
        data.heartbeats
          .slice()
          .reverse()
          .forEach(function (beat) {
            points.push(point(beat.metrics));
          });
        drawChart(svg, points);
        if (points.length === 0) document.getElementById("chart-note").textContent = _("No heartbeats yet.");
      })
      .catch(function (err) {
        showError(error, err);
      });

    live.on(function (event) {
      if (event.server_id !== id) return;
      if (event.kind === "server.metrics") {
        updateMetrics(figures, event.data);
        points.push(point(event.data));
        if (points.length > limit) points.shift();
        drawChart(svg, points);
        return;
      }
      if (event.kind === "server.online" || event.kind === "server.offline") {
        setStatus(head.querySelector("[data-field=status]"), event.kind === "server.online" ? "online" : "offline");
      }
      if (event.kind === "live.ready") return;
      const empty = timeline.querySelector(".empty");
      if (empty) empty.remove();
      timeline.prepend(el("li", null, timeElement(event.at), " ", el("span", null, describe(event, head.querySelector("h1").firstChild.textContent.trim()))));
    });

    const token = document.getElementById("install-token");
    if (token) {
      token.addEventListener("click", function () {
        busy(token, async function () {
          try {
            showInstall(await api("POST", "/servers/" + id + "/install-token", {}));
          } catch (err) {
            showError(error, err);
          }
        });
      });
    }
    const remove = document.getElementById("delete-server");
    if (remove) {
      remove.addEventListener("click", async function () {
        const ok = await confirmAction(
          format(_("Delete %(name)s? Its apps stop being managed from here."), { name: remove.dataset.name }),
          _("Delete server")
        );
        if (!ok) return;
        try {
          await api("DELETE", "/servers/" + id);
          location.assign("/");
        } catch (err) {
          showError(error, err);
        }
      });
    }
    const modeForm = document.getElementById("mode-form");
    if (modeForm) {
      modeForm.addEventListener("submit", async function (submit) {
        submit.preventDefault();
        hideError(error);
        try {
          await api("PATCH", "/servers/" + id, { security_mode: modeForm.elements.security_mode.value });
          toast(_("Saved."));
        } catch (err) {
          showError(error, err);
        }
      });
    }
  }

  function appNewPage() {
    const form = document.getElementById("app-form");
    if (!form) return;
    const error = document.getElementById("app-error");
    form.addEventListener("submit", async function (submit) {
      submit.preventDefault();
      hideError(error);
      const f = form.elements;
      if (!f.name.checkValidity()) {
        showError(error, _("Use lowercase letters, digits and hyphens (like shop)."));
        f.name.focus();
        return;
      }
      const servers = Array.prototype.filter
        .call(form.querySelectorAll("input[name=servers]"), function (box) { return box.checked; })
        .map(function (box) { return box.value; });
      if (servers.length === 0) {
        showError(error, _("Choose at least one server."));
        return;
      }
      const env = {};
      for (const line of lines(f.env.value)) {
        const at = line.indexOf("=");
        if (at < 1) {
          showError(error, format(_("Environment line %(line)s is not KEY=value."), { line: line.split("=")[0] }));
          f.env.focus();
          return;
        }
        env[line.slice(0, at).trim()] = line.slice(at + 1);
      }
      const body = {
        name: f.name.value.trim(),
        repo: f.repo.value.trim(),
        servers: servers,
        tls: f.tls.checked,
        health_path: f.health_path.value.trim() || "/",
        env: env,
      };
      if (f.runtime && f.runtime.value) body.runtime = f.runtime.value;
      if (f.branch.value.trim()) body.branch = f.branch.value.trim();
      if (f.domain.value.trim()) body.domains = [f.domain.value.trim().toLowerCase()];
      const build = lines(f.build.value);
      if (build.length) body.build = build;
      if (f.start.value.trim()) body.start = f.start.value.trim();
      if (f.port.value) body.port = Number(f.port.value);
      const button = form.querySelector("button[type=submit]");
      await busy(button, async function () {
        try {
          const app = await api("POST", "/apps", body);
          location.assign("/apps/" + app.id);
        } catch (err) {
          showError(error, err);
        }
      });
    });
  }

  function appPage() {
    const head = document.getElementById("app-head");
    const appId = head.dataset.appId;
    const appName = head.dataset.appName;
    const data = JSON.parse(document.getElementById("app-data").textContent || "{}");
    const servers = data.servers || {};
    const error = document.getElementById("app-error");
    const log = document.getElementById("log");
    const which = document.getElementById("log-which");
    const table = document.getElementById("deployments");
    let following = head.dataset.follow || null;
    let pinned = false; // the reader chose a deployment: do not jump to new ones
    let lastSeq = 0;
    let loading = false;
    let buffered = [];

    function append(line) {
      if (line.seq <= lastSeq) return;
      lastSeq = line.seq;
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      const stage = line.stage ? "[" + line.stage + "] " : "";
      log.append(document.createTextNode(stage + line.line + "\n"));
      if (atBottom) log.scrollTop = log.scrollHeight;
    }

    async function showLog(id) {
      if (following && following !== id) live.unfollow(following);
      following = id;
      lastSeq = 0;
      buffered = [];
      log.textContent = "";
      if (!id) return;
      const row = table.querySelector('tr[data-deployment-id="' + CSS.escape(id) + '"]');
      which.textContent = row ? format(_("(deployment #%(number)s)"), { number: row.cells[0].textContent }) : "";
      live.follow(id);
      loading = true;
      try {
        const answer = await api("GET", "/deployments/" + id + "/logs");
        if (following !== id) return;
        answer.lines.forEach(append);
        buffered.forEach(append);
      } catch (err) {
        showError(error, err);
      } finally {
        loading = false;
        buffered = [];
      }
    }

    function row(dep) {
      return el(
        "tr",
        { "data-deployment-id": dep.id },
        el("td", null, dep.number),
        el("td", null, word(KINDS, dep.kind)),
        el("td", null, badge(dep.status), dep.reason ? el("div", { class: "reason" }, dep.reason) : null),
        el("td", null, servers[dep.server_id] || "–"),
        el("td", null, el("code", null, dep.release || "–")),
        el("td", null, dep.triggered_by),
        el("td", null, timeElement(dep.created_at)),
        el("td", null, duration(dep.duration_ms)),
        el("td", null, el("button", { type: "button", class: "link", "data-show-log": dep.id }, _("Log")))
      );
    }

    async function refresh() {
      try {
        const answer = await api("GET", "/apps/" + appId + "/deployments");
        const body = table.tBodies[0];
        body.replaceChildren.apply(body, answer.deployments.map(row));
        const rollback = document.getElementById("rollback");
        if (rollback) rollback.disabled = answer.deployments.length === 0;
        return answer.deployments;
      } catch (err) {
        showError(error, err);
        return [];
      }
    }

    table.addEventListener("click", function (click) {
      const button = click.target.closest("[data-show-log]");
      if (!button) return;
      pinned = true;
      showLog(button.dataset.showLog);
      log.focus();
    });

    live.on(async function (event) {
      if (event.kind === "live.ready") {
        if (following) showLog(following);
        return;
      }
      if (event.kind === "deployment.log" && event.data.deployment_id === following) {
        if (loading) buffered.push(event.data);
        else append(event.data);
        return;
      }
      if ((event.kind === "deployment.started" || event.kind === "deployment.finished") && event.data.app === appName) {
        await refresh();
        if (event.kind === "deployment.started" && !pinned && event.data.deployment_id !== following) {
          showLog(event.data.deployment_id);
        }
        if (event.kind === "deployment.finished") {
          toast(format(_("Deployment of %(app)s: %(status)s"), { app: appName, status: word(STATUS, event.data.status) }));
        }
      }
    });

    async function start(kind) {
      hideError(error);
      const question =
        kind === "deploy"
          ? format(_("Deploy %(app)s now? The new release replaces the live one once it is healthy."), { app: appName })
          : format(_("Roll %(app)s back to the previous release?"), { app: appName });
      const ok = await confirmAction(question, kind === "deploy" ? _("Deploy") : _("Roll back"));
      if (!ok) return;
      const button = document.getElementById(kind);
      await busy(button, async function () {
        try {
          const answer = await api("POST", "/apps/" + appId + "/" + kind, {});
          await refresh();
          pinned = false;
          if (answer.deployments.length) showLog(answer.deployments[0].id);
          toast(kind === "deploy" ? _("Deployment started.") : _("Rollback started."));
        } catch (err) {
          showError(error, err);
        }
      });
    }

    ["deploy", "rollback"].forEach(function (kind) {
      const button = document.getElementById(kind);
      if (button) button.addEventListener("click", function () { start(kind); });
    });
    const remove = document.getElementById("delete-app");
    if (remove) {
      remove.addEventListener("click", async function () {
        const ok = await confirmAction(
          format(_("Delete %(app)s? It is stopped on its servers and its settings are lost."), { app: appName }),
          _("Delete app")
        );
        if (!ok) return;
        await busy(remove, async function () {
          try {
            await api("DELETE", "/apps/" + appId);
            location.assign("/");
          } catch (err) {
            showError(error, err);
          }
        });
      });
    }
    if (following) showLog(following);
  }

  // The app page's settings form: PATCH /apps/<id>; an empty field is the default again.
  function appEditForm() {
    const form = document.getElementById("app-edit-form");
    if (!form) return;
    const appId = document.getElementById("app-head").dataset.appId;
    const error = document.getElementById("app-edit-error");
    form.addEventListener("submit", async function (submit) {
      submit.preventDefault();
      hideError(error);
      const f = form.elements;
      const build = lines(f.build.value);
      const body = {
        repo: f.repo.value.trim(),
        branch: f.branch.value.trim() || null,
        build: build.length ? build : null,
        start: f.start.value.trim() || null,
        port: f.port.value ? Number(f.port.value) : null,
        health_path: f.health_path.value.trim() || "/",
        health_timeout_s: Number(f.health_timeout_s.value),
        domains: lines(f.domains.value).map(function (d) { return d.toLowerCase(); }),
        tls: f.tls.checked,
        runtime: f.runtime.value,
        keep_releases: Number(f.keep_releases.value),
      };
      const button = form.querySelector("button[type=submit]");
      await busy(button, async function () {
        try {
          await api("PATCH", "/apps/" + appId, body);
          location.assign(location.pathname + "?saved=1");
        } catch (err) {
          showError(error, err);
        }
      });
    });
  }

  function appRuntimeLogs() {
    const section = document.getElementById("runtime-logs");
    if (!section) return;
    const appId = document.getElementById("app-head").dataset.appId;
    const output = document.getElementById("runtime-log");
    const error = document.getElementById("runtime-log-error");
    const refresh = document.getElementById("runtime-log-refresh");
    const followButton = document.getElementById("runtime-log-follow");
    const empty = document.getElementById("runtime-log-empty");
    const path = "/apps/" + encodeURIComponent(appId) + "/logs?lines=100";
    let source = null;

    function show(node) {
      if (empty) empty.hidden = true;
      const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 8;
      output.append(node);
      while (output.childNodes.length > 1000) output.firstChild.remove();
      if (atBottom) output.scrollTop = output.scrollHeight;
    }

    function line(data) {
      const process = data.type + (data.index > 1 ? "." + data.index : "");
      const text = process + " " + data.release + " | " + data.line + "\n";
      show(el("span", data.stream === "err" ? { class: "err" } : null, text));
    }

    function notice(data) {
      const where = data.server ? data.server + ": " : "";
      show(el("span", { class: "notice" }, "-- " + where + data.message + "\n"));
    }

    async function load() {
      hideError(error);
      try {
        const answer = await api("GET", path);
        output.replaceChildren();
        answer.lines.forEach(line);
        answer.problems.forEach(notice);
        if (!answer.lines.length) notice({ message: _("No output yet.") });
      } catch (err) {
        showError(error, err);
      }
    }

    function stop() {
      if (source) source.close();
      source = null;
      followButton.setAttribute("aria-pressed", "false");
      followButton.textContent = _("Follow live");
    }

    function follow() {
      hideError(error);
      source = new EventSource("/api/v1" + path + "&follow=true");
      followButton.setAttribute("aria-pressed", "true");
      followButton.textContent = _("Stop following");
      // Each (re)connection starts with the last lines again: show them once.
      source.onopen = function () { output.replaceChildren(); };
      source.addEventListener("log", function (message) { line(JSON.parse(message.data)); });
      source.addEventListener("notice", function (message) { notice(JSON.parse(message.data)); });
      source.onerror = function () {
        if (source && source.readyState === EventSource.CLOSED) {
          stop();
          load(); // refused (an agent offline...): the plain request says why
        }
      };
    }

    refresh.addEventListener("click", function () {
      busy(refresh, load);
    });
    followButton.addEventListener("click", function () {
      if (source) stop();
      else follow();
    });
    window.addEventListener("pagehide", stop);
    if (section.dataset.load === "auto") load();
  }

  function eventsPage() {
    const timeline = document.getElementById("timeline");
    const names = JSON.parse(document.getElementById("server-names").textContent || "{}");
    live.on(function (event) {
      if (event.kind === "live.ready" || event.kind === "server.metrics" || event.kind === "deployment.log") return;
      const empty = timeline.querySelector(".empty");
      if (empty) empty.remove();
      const item = el("li", { "data-kind": event.kind }, timeElement(event.at), " ", el("span", null, describe(event, names[event.server_id])));
      if (event.server_id && names[event.server_id]) {
        item.append(" ", el("a", { href: "/servers/" + event.server_id }, names[event.server_id]));
      }
      timeline.prepend(item);
    });
  }

  function settingsPage() {
    const form = document.getElementById("token-form");
    if (!form) return;
    const list = document.getElementById("token-list");
    const error = document.getElementById("token-error");

    function state(token) {
      if (token.revoked_at) return _("Revoked");
      if (token.expires_at && new Date(token.expires_at) <= new Date()) return _("Expired");
      return _("Active");
    }

    async function load() {
      try {
        const answer = await api("GET", "/tokens");
        const rows = answer.tokens.map(function (token) {
          return el(
            "tr",
            { "data-token-id": token.id, "data-token-name": token.name },
            el("th", { scope: "row" }, token.name),
            el("td", null, word(ROLES, token.role)),
            el("td", null, el("code", null, token.prefix + "…")),
            el("td", null, timeElement(token.created_at)),
            el("td", null, timeElement(token.last_used_at)),
            el("td", null, token.expires_at ? timeElement(token.expires_at) : "–"),
            el("td", { "data-field": "state" }, state(token)),
            el(
              "td",
              null,
              token.revoked_at
                ? null
                : el("button", { type: "button", class: "danger small", "data-revoke": token.id, "data-name": token.name }, _("Revoke"))
            )
          );
        });
        list.tBodies[0].replaceChildren.apply(list.tBodies[0], rows);
        list.setAttribute("aria-busy", "false");
      } catch (err) {
        showError(error, err);
      }
    }

    form.addEventListener("submit", async function (submit) {
      submit.preventDefault();
      hideError(error);
      const f = form.elements;
      if (!f.name.value.trim()) {
        showError(error, _("Give the token a name."));
        f.name.focus();
        return;
      }
      const body = { name: f.name.value.trim(), role: f.role.value };
      if (f.expires_in_days.value) body.expires_in_days = Number(f.expires_in_days.value);
      await busy(form.querySelector("button[type=submit]"), async function () {
        try {
          const made = await api("POST", "/tokens", body);
          document.getElementById("token-value").textContent = made.token;
          const box = document.getElementById("token-created");
          box.hidden = false;
          box.focus();
          form.reset();
          await load();
        } catch (err) {
          showError(error, err);
        }
      });
    });

    list.addEventListener("click", async function (click) {
      const button = click.target.closest("[data-revoke]");
      if (!button) return;
      const ok = await confirmAction(
        format(_("Revoke the token %(name)s? Scripts using it stop working at once."), { name: button.dataset.name }),
        _("Revoke")
      );
      if (!ok) return;
      try {
        await api("DELETE", "/tokens/" + button.dataset.revoke);
        toast(_("Token revoked."));
        await load();
      } catch (err) {
        showError(error, err);
      }
    });
    load();
  }

  function pluginsPage() {
    const error = document.getElementById("plugin-error");
    function done(notice, name, restart) {
      location.assign(
        "/plugins?notice=" + notice + "&plugin=" + encodeURIComponent(name) + (restart ? "&restart=1" : "")
      );
    }
    document.querySelectorAll("[data-install]").forEach(function (button) {
      button.addEventListener("click", async function () {
        const name = button.dataset.install;
        const ok = await confirmAction(
          format(_("Install %(name)s into the control plane? Plugins run with the control plane's rights."), { name: name }),
          _("Install")
        );
        if (!ok) return;
        hideError(error);
        await busy(button, async function () {
          button.textContent = _("Installing…");
          try {
            const result = await api("POST", "/plugins/install", { name: name });
            done("installed", name, result.restart_required);
          } catch (err) {
            showError(error, err);
          }
        });
      });
    });
    document.querySelectorAll("[data-plugin-action]").forEach(function (button) {
      button.addEventListener("click", async function () {
        const action = button.dataset.pluginAction;
        const name = button.dataset.name;
        hideError(error);
        await busy(button, async function () {
          try {
            const result = await api("POST", "/plugins/" + encodeURIComponent(name) + "/" + action, {});
            done(action === "enable" ? "enabled" : "disabled", name, result.restart_required);
          } catch (err) {
            showError(error, err);
          }
        });
      });
    });
  }

  const pages = {
    overview: overviewPage,
    "server-new": serverNewPage,
    server: serverPage,
    "app-new": appNewPage,
    app: function () {
      appPage();
      appEditForm();
      appRuntimeLogs();
    },
    events: eventsPage,
    settings: settingsPage,
    plugins: pluginsPage,
  };

  localizeTimes(document);
  wireCopyButtons();
  wireRevealButtons();
  const setup = pages[document.body.dataset.page];
  if (setup) setup();
  if (document.getElementById("live-state")) live.connect();
  window.ServerFlow = { live: live, api: api };
})();
