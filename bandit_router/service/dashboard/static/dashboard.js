/* bandit-router dashboard: polls the JSON endpoints every 2 s and draws them with uPlot (vendored).
 * No build step, no framework, nothing from another origin. Text from the server is only ever set with
 * textContent (a tenant name or a prompt is data, never markup). */
(function () {
  "use strict";

  var POLL_MS = 2000;
  var TIMEOUT_MS = 10000;  // a poll without an answer by then failed: a frozen service must not look like a quiet one
  var SHADOW_MS = 15000;
  var RECENT_S = 300;  // the traffic figures' window
  var KEY = "bandit-router-api-key";
  var COLORS = ["#2f6fde", "#e8702a", "#1a9c6b", "#c4302b", "#8e5cd9", "#b08400", "#0f8fa8", "#d6458f", "#5b6b7d",
                "#7fa32b", "#a0522d", "#444c9e"];

  var FEEDBACK_NOTES = {  // what the recent decisions' quality column says when nothing was learned
    pending: "no feedback learned yet: it may still come",
    expired: "no feedback came before its reward window closed: nothing will be learned",
    late: "its feedback came after the reward window closed: stored, never learned",
    unrouted: "the caller named the model: its feedback is stored, never learned"
  };

  var state = {
    range: "hour", charts: {}, renders: 0, last: null, live: null, shadowsAt: null, timer: null, busy: false,
    again: false, session: 0, errors: 0, updatedAt: null, updatedTick: null, failure: null, said: ""
  };
  // How long ago something happened is measured by performance.now(), a steady clock: Date.now() is the wall clock,
  // which NTP or a person may set back (the shadows were then not asked again for the length of the step)
  window.banditDashboard = state; // for the browser tests and for a curious person's console

  function $(id) { return document.getElementById(id); }

  function AuthError(message) { this.message = message; }
  function Unreachable(message) { this.message = message; }  // no answer: refused, reset, or none in time
  function Refused(message) { this.message = message; }  // an answer that is not the data: 503, a proxy's 502

  function apiKey() { return window.sessionStorage.getItem(KEY); }

  // `timeoutMs`: abort when the whole reply has not arrived by then (the polls; a promotion may take longer).
  function request(path, options, timeoutMs) {
    options = options || {};
    var headers = options.headers || {};
    var key = apiKey();
    if (key) { headers.Authorization = "Bearer " + key; }
    options.headers = headers;
    options.cache = "no-store";
    var controller = new AbortController(), timer = null;
    options.signal = controller.signal;
    if (timeoutMs) { timer = window.setTimeout(function () { controller.abort(); }, timeoutMs); }
    return window.fetch(path, options).then(function (reply) {
      if (reply.status === 401) { throw new AuthError("the key was refused"); }
      return reply.text().then(function (text) {
        var body = null;
        try { body = JSON.parse(text); } catch (e) { body = null; }  // a proxy's HTML error page is not JSON
        if (!reply.ok) { throw new Refused(body && body.message ? body.message : "HTTP " + reply.status); }
        if (body === null) { throw new Refused("HTTP " + reply.status + ", not JSON"); }
        return body;
      });
    }).catch(function (err) {
      if (err instanceof AuthError || err instanceof Refused) { throw err; }
      // fetch rejects with a TypeError when nothing answered (also midway through the body), an AbortError when
      // the timer fired
      throw new Unreachable(controller.signal.aborted ? "no answer within " + timeoutMs / 1000 + " s"
                                                      : "cannot reach the service");
    }).finally(function () { if (timer !== null) { window.clearTimeout(timer); } });
  }

  // -- formatting ------------------------------------------------------------------------------------------
  function num(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
  function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"; }
  function usd(v) {
    if (v === null || v === undefined) { return "–"; }
    return "$" + (Math.abs(v) >= 0.01 ? v.toFixed(4) : v.toPrecision(3));
  }
  function seconds(v) {
    if (v === null || v === undefined) { return "–"; }
    return v < 120 ? v.toFixed(1) + " s" : (v / 60).toFixed(1) + " min";
  }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }
  // The charts' times in the browser's locale and time zone, as the tables' (uPlot's own are English: 6:00pm 11/5/26)
  var TICK_TIME = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
  var TICK_DAY = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  var MOMENT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  function timeTicks(u, splits, axisIdx, space, incr) {
    var previous = null;
    return splits.map(function (t) {  // the day under the first tick and under each tick that starts another
      var when = new Date(t * 1000), day = TICK_DAY.format(when);
      if (incr >= 86400) { return day; }
      var label = TICK_TIME.format(when) + (day !== previous ? "\n" + day : "");
      previous = day;
      return label;
    });
  }
  function stamp(t) {  // a decision's time; with its day when that is not today (a quiet service's newest decisions)
    var when = new Date(t * 1000);
    return when.toDateString() === new Date().toDateString() ? when.toLocaleTimeString()
      : when.toLocaleDateString() + " " + when.toLocaleTimeString();
  }
  function moment(u, t) { return t === null || t === undefined ? "–" : MOMENT.format(new Date(t * 1000)); }
  function lastValue(values) {
    for (var i = values.length - 1; i >= 0; i--) { if (values[i] !== null && values[i] !== undefined) { return values[i]; } }
    return null;
  }
  // Per minute over the newest 5 minutes of buckets (at least the newest bucket): each bucket's count over the time
  // it covers. The bucket holding `until` has lasted only until then, and its rate is its count over that time but
  // at least a minute: a mean of the rates read up to a fifth low early in each minute, a sawtooth at a steady rate.
  function recentRate(rates, ts) {
    var count = 0, seconds = 0;
    for (var i = rates.length - 1; i >= 0 && seconds < RECENT_S; i--) {
      var lasted = Math.max(0, Math.min(ts.step, ts.until - ts.time[i]));
      if (rates[i] !== null) { count += rates[i] * Math.max(60, lasted) / 60; }
      seconds += lasted;
    }
    return seconds > 0 ? count / (seconds / 60) : null;
  }

  // -- DOM helpers -----------------------------------------------------------------------------------------
  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) { td.className = className; }
    row.appendChild(td);
    return td;
  }
  function fill(tbody, items, build) {
    tbody.textContent = "";
    items.forEach(function (item) {
      var tr = document.createElement("tr");
      build(tr, item);
      tbody.appendChild(tr);
    });
  }
  // The polite live region. A state (up to date, not updating and why) is said when it changes, so that a screen
  // reader hears it once, not at every poll; an event (a promotion's answer) each time it happens. A poll after an
  // event does not say the state again (it did: "up to date" followed every promotion, and a second refusal in the
  // same words was never said).
  function announce(text, event) {
    if (!event) {
      if (state.said === text) { return; }
      state.said = text;
    }
    $("announce").textContent = text;
  }

  // A table that scrolls sideways (a phone, 400% zoom) or down (the budgets of many tenants) is a Tab stop, so
  // that the keyboard can scroll it; one that fits is not (the one under focus keeps it until it loses focus).
  function scrollStops() {
    document.querySelectorAll(".scroll").forEach(function (el) {
      if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1) { el.tabIndex = 0; }
      else if (el !== document.activeElement) { el.removeAttribute("tabindex"); }
    });
  }

  function ready(panel, count) {
    var el = document.querySelector('[data-panel="' + panel + '"]');
    el.dataset.ready = count > 0 ? "1" : "0";
    el.dataset.count = String(count);
  }

  // -- charts ----------------------------------------------------------------------------------------------
  function chartWidth(el) { return Math.max(260, el.clientWidth || el.parentNode.clientWidth - 24); }

  function makeChart(id, series, axes, data, height) {
    var el = $(id);
    el.textContent = "";
    var opts = {
      width: chartWidth(el), height: height || 170, series: [{ value: moment }].concat(series),
      axes: [{ values: timeTicks }].concat(axes), scales: { x: { time: true } }, legend: { live: true },
      cursor: { drag: { x: false, y: false } }
    };
    var scaleNames = {};
    series.forEach(function (s) { if (s.scale) { scaleNames[s.scale] = true; } });
    Object.keys(scaleNames).forEach(function (name) {
      if (name === "share") { opts.scales[name] = { range: [0, 1] }; }
    });
    var chart = new window.uPlot(opts, data, el);
    state.charts[id] = chart;
    legendKeys(chart, el);
    return chart;
  }

  // uPlot's legend hides or shows a series on a click of its name: a mouse's only. Each name is a toggle button
  // for the keyboard too (Tab, Enter or Space), saying whether its series is shown; the time row and the values
  // under the cursor (a dash without one) are not read out.
  function legendKeys(chart, el) {
    el.querySelectorAll(".u-legend .u-series").forEach(function (row, i) {
      if (i === 0) { row.setAttribute("aria-hidden", "true"); return; }
      row.querySelectorAll("td").forEach(function (td) { td.setAttribute("aria-hidden", "true"); });
      var name = row.querySelector("th");
      name.tabIndex = 0;
      name.setAttribute("role", "button");
      function pressed() { name.setAttribute("aria-pressed", String(chart.series[i].show !== false)); }
      pressed();
      name.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); name.click(); }
      });
      name.addEventListener("click", function () { window.setTimeout(function () {
        el.querySelectorAll(".u-legend .u-series th[role=button]").forEach(function (th, k) {
          th.setAttribute("aria-pressed", String(chart.series[k + 1].show !== false));
        });
      }); });
    });
  }

  // The i-th model's colour (hex: its fill adds an alpha): the palette's, then hues a golden angle apart at two
  // lightnesses, so that no two models share one however many there are (the palette repeated from the 13th).
  function modelColor(i) {
    if (i < COLORS.length) { return COLORS[i]; }
    var k = i - COLORS.length, h = (k * 137.508 + 15) % 360, l = k % 2 ? 0.6 : 0.42, a = 0.55 * Math.min(l, 1 - l);
    function channel(n) {
      var m = (n + h / 30) % 12;
      return Math.round(255 * (l - a * Math.max(-1, Math.min(m - 3, 9 - m, 1)))).toString(16).padStart(2, "0");
    }
    return "#" + channel(0) + channel(8) + channel(4);
  }

  function line(label, color, scale, format, dashed) {
    var s = { label: label, stroke: color, width: 2, spanGaps: true, scale: scale || "y",
              value: function (u, v) { return format ? format(v) : num(v, 2); } };
    if (dashed) { s.dash = [6, 4]; s.width = 1.5; s.points = { show: false }; }
    return s;
  }
  function axis(scale, format, side) {
    var a = { scale: scale, size: 64 };
    if (format) { a.values = function (u, ticks) { return ticks.map(format); }; }
    if (side) { a.side = side; a.grid = { show: false }; }
    return a;
  }

  // `labels`: the series' names; uPlot writes a legend once, so a chart whose names change is made again.
  function updateOrMake(id, build, data, labels) {
    var chart = state.charts[id];
    var same = chart && chart.series.length === data.length &&
      chart.series.every(function (s, i) { return i === 0 || s.label === labels[i - 1]; });
    if (same) { chart.setData(data); return chart; }
    if (chart) { chart.destroy(); delete state.charts[id]; }
    return build(data);
  }

  // A chart's text alternative (a canvas says nothing to a screen reader): each series' newest value, lowest and
  // highest over the range, in the chart's own formats. `parts`: [label, values, format].
  var RANGE_WORDS = { hour: "the last hour", day: "the last day", week: "the last week" };
  function describe(id, title, parts) {
    var text = title + " over " + RANGE_WORDS[state.range] + ": " + parts.map(function (p) {
      var known = p[1].filter(function (v) { return v !== null && v !== undefined; });
      if (!known.length) { return p[0] + " no data"; }
      var low = Math.min.apply(null, known), high = Math.max.apply(null, known);
      return p[0] + " newest " + p[2](lastValue(p[1])) +
        (low === high ? "" : ", lowest " + p[2](low) + ", highest " + p[2](high));
    }).join("; ") + ".";
    var plot = $(id).querySelector(".u-wrap");  // the canvas: the legend beside it is read as itself
    plot.setAttribute("role", "img");
    plot.setAttribute("aria-label", text);
  }
  function two(v) { return num(v, 2); }

  function constant(level, n) {
    var out = [];
    for (var i = 0; i < n; i++) { out.push(level === null || level === undefined ? null : level); }
    return out;
  }

  function drawCharts(ts) {
    var t = ts.time;
    updateOrMake("chart-traffic", function (d) {
      return makeChart("chart-traffic", [line("decisions/min", COLORS[0]), line("feedbacks/min", COLORS[2])],
                       [axis("y")], d);
    }, [t, ts.decisions_per_minute, ts.feedback_per_minute], ["decisions/min", "feedbacks/min"]);
    describe("chart-traffic", "Traffic", [["decisions/min", ts.decisions_per_minute, two],
                                          ["feedbacks/min", ts.feedback_per_minute, two]]);
    updateOrMake("chart-coverage", function (d) {
      return makeChart("chart-coverage", [line("coverage", COLORS[1], "share", pct), line("lag", COLORS[4], "s", seconds)],
                       [axis("share", pct), axis("s", seconds, 1)], d);
    }, [t, ts.coverage, ts.lag_s], ["coverage", "lag"]);
    describe("chart-coverage", "Feedback coverage and lag", [["coverage", ts.coverage, pct],
                                                              ["lag", ts.lag_s, seconds]]);

    // Stacked shares: cumulative sums, the largest drawn first and each filled down to zero.
    var models = Object.keys(ts.shares);
    var cumulative = [], running = t.map(function () { return 0; });
    models.forEach(function (m) {
      running = running.map(function (v, i) { return v + (ts.shares[m][i] || 0); });
      cumulative.push(running.slice());
    });
    var stacked = [t].concat(cumulative.slice().reverse());
    var rawShares = ts.shares;
    updateOrMake("chart-shares", function (d) {
      var series = models.slice().reverse().map(function (m) {
        var color = modelColor(models.indexOf(m));
        return { label: m, stroke: color, fill: color + "cc", width: 1, scale: "share", points: { show: false },
                 value: function (u, v, si, i) { return i === null || i === undefined ? "–" : pct(rawShares[m][i]); } };
      });
      return makeChart("chart-shares", series, [axis("share", pct)], d, 220);
    }, stacked, models.slice().reverse());
    describe("chart-shares", "Model shares", models.map(function (m) { return [m, ts.shares[m], pct]; }));
    // keep the legend's raw values current after setData
    state.charts["chart-shares"].series.forEach(function (s, si) {
      if (si > 0) {
        var m = s.label;
        s.value = function (u, v, sIdx, i) { return i === null || i === undefined ? "–" : pct(ts.shares[m] ? ts.shares[m][i] : null); };
      }
    });

    var best = ts.best_fixed || {};
    var n = t.length;
    [["chart-quality", "quality", ts.quality, best.fixed_quality, function (v) { return num(v, 3); }],
     ["chart-cost", "cost / request", ts.cost_usd, best.fixed_cost_usd, usd],
     ["chart-reward", "reward", ts.reward, best.fixed_reward, function (v) { return num(v, 3); }]
    ].forEach(function (spec) {
      var label = best.model ? "always " + best.model : "best fixed model (not estimable yet)";
      updateOrMake(spec[0], function (d) {
        return makeChart(spec[0], [line(spec[1], COLORS[0], "y", spec[4]), line(label, COLORS[3], "y", spec[4], true)],
                         [axis("y", spec[4])], d, 150);
      }, [t, spec[2], constant(spec[3], n)], [spec[1], label]);
      describe(spec[0], spec[1].charAt(0).toUpperCase() + spec[1].slice(1),
               [[spec[1], spec[2], spec[4]], [label, constant(spec[3], 1), spec[4]]]);
    });
    updateOrMake("chart-exploration", function (d) {
      return makeChart("chart-exploration", [line("non-greedy share", COLORS[1], "share", pct),
                                             line("policy version", COLORS[4], "v", function (v) { return num(v, 0); })],
                       [axis("share", pct), axis("v", function (v) { return num(v, 0); }, 1)], d);
    }, [t, ts.exploration, ts.policy_version], ["non-greedy share", "policy version"]);
    describe("chart-exploration", "Exploration", [["non-greedy share", ts.exploration, pct],
      ["policy version", ts.policy_version, function (v) { return num(v, 0); }]]);
  }

  // -- panels ----------------------------------------------------------------------------------------------
  // `minutes`: the newest minutes in buckets of one (the Hour range's own series): the figures are the last
  // 5 minutes' on every range, not the newest 15-minute or hour bucket's of Day and Week (a rate an hour after the
  // traffic stopped)
  function drawTraffic(ts, minutes) {
    var o = ts.overall;
    $("kpi-decisions").textContent = num(recentRate(minutes.decisions_per_minute, minutes), 1);
    $("kpi-feedback").textContent = num(recentRate(minutes.feedback_per_minute, minutes), 1);
    $("kpi-coverage").textContent = pct(o.coverage);
    $("kpi-lag").textContent = seconds(o.lag_s);
    ready("traffic", o.decisions);
    ready("shares", Object.keys(ts.shares).length);
    var best = ts.best_fixed;
    $("best-fixed").textContent = best.model
      ? "Dashed: always " + best.model + " (SNIPS estimate over the range, " + best.n + " feedbacks): quality " +
        num(best.fixed_quality, 3) + ", cost " + usd(best.fixed_cost_usd) + ", reward " + num(best.fixed_reward, 3) + "."
      : "Best fixed model: " + best.reason + ".";
    ready("quality", o.learned);
    $("kpi-exploration").textContent = pct(o.exploration);
    ready("exploration", o.decisions);
  }

  function drawModels(ts, live) {
    var rows = ts.models.slice();
    var seen = Object.create(null);  // no inherited keys: a model may be named `constructor` or `__proto__`
    rows.forEach(function (r) { seen[r.model] = true; });
    live.models.forEach(function (m) { if (!seen[m]) { rows.push({ model: m, decisions: 0, in_catalog: true }); } });
    rows.sort(function (a, b) { return (b.decisions || 0) - (a.decisions || 0); });
    fill(document.querySelector("#models-table tbody"), rows, function (tr, r) {
      var name = cell(tr, r.model);
      if (r.in_catalog === false) {  // removed from the catalog or retired: shown for its past decisions
        tr.className = "retired";
        var note = document.createElement("span");
        note.className = "muted";
        note.textContent = " not in the catalog";
        name.appendChild(note);
        name.title = "removed from the catalog or retired: listed for its past decisions";
      }
      cell(tr, String(r.decisions || 0));
      cell(tr, pct(r.share));
      cell(tr, num(r.quality, 3));
      cell(tr, usd(r.cost_usd));
      cell(tr, num(r.reward, 3));
      cell(tr, num(r.fixed_reward, 3));
      // what the live policy would give it now (a model just added: its exploration floor); a retired one: none
      var now = cell(tr, r.in_catalog === false ? "–" : pct(live.typical.now[r.model]));
      // none of the newest requests allowed it (they named their own models without it, a hard budget left it out,
      // or it was added since); a logged probability of 0 is not that: a model every request allowed can average 0
      if (r.in_catalog !== false && live.typical.decisions > 0 && !(live.typical.allowed[r.model] > 0) &&
          live.typical.now[r.model] > 0) {
        var offered = document.createElement("span");
        offered.className = "muted";
        offered.textContent = " if allowed";
        now.appendChild(offered);
        now.title = "none of the newest requests allowed this model (they named their own models without it, a " +
                    "hard budget left it out then: a share of 0 or the guard of an exhausted spend target; or it " +
                    "was added since): a request that names no models would give it this probability now";
      }
    });
    $("models-note").textContent = live.typical.decisions > 0 ? "" :
      "Probability now: – until the first routed request (it averages the live policy's pmf over the newest " +
      "requests' contexts).";
    ready("models", rows.length);
  }

  function drawRouters(routers) {
    var names = Object.keys(routers).sort();
    var tbody = document.querySelector("#routers-table tbody");
    if (!names.length) {
      fill(tbody, [null], function (tr) {
        var td = cell(tr, "No named routers ([[routers]] in the configuration).");
        td.colSpan = 7;
      });
      ready("routers", 1);
      return;
    }
    fill(tbody, names, function (tr, name) {
      var r = routers[name];
      var calls = r.answer_calls + r.judge_calls + r.router_calls;
      cell(tr, name);
      cell(tr, r.strategy);
      cell(tr, String(r.requests));
      cell(tr, String(r.escalations) + " (" + pct(r.escalation_rate) + ")");
      cell(tr, r.requests ? num(calls / r.requests, 2) : "–");
      cell(tr, String(r.failed_requests));
      cell(tr, num(r.spend_usd, 6));
    });
    ready("routers", names.length);
  }

  function drawLive(live) {
    $("policy").textContent = "live policy " + live.policy + " · version " + live.policy_version;
    $("kpi-version").textContent = String(live.policy_version);
    drawRouters(live.named_routers || {});
    var scopes = [["all traffic", live.budgets.global]];
    Object.keys(live.budgets.tenants).sort().forEach(function (name) {
      scopes.push(["tenant " + name, live.budgets.tenants[name]]);
    });
    var rows = [];
    scopes.forEach(function (s) {
      s[1].targets.forEach(function (target) { rows.push({ scope: s[0], lam: s[1].cost_weight, target: target }); });
    });
    var tbody = document.querySelector("#budgets-table tbody");
    if (!rows.length) {
      fill(tbody, [null], function (tr) {
        var td = cell(tr, "No budget targets are set (PUT /v1/budgets or [budgets] in the configuration).");
        td.colSpan = 6;
      });
      ready("budgets", 1);
      return;
    }
    fill(tbody, rows, function (tr, r) {
      var t = r.target;
      cell(tr, r.scope);
      cell(tr, t.target);
      cell(tr, t.kind === "share" ? pct(t.value) : num(t.value, 6));
      cell(tr, t.realized === null ? "–" : t.kind === "share" ? pct(t.realized) : num(t.realized, 6));
      cell(tr, t.holds === null ? "–" : t.holds ? "yes" : "no", t.holds === false ? "holds-no" : "holds-yes");
      cell(tr, num(t.multiplier, 2));
    });
    ready("budgets", rows.length);
  }

  function drawRecent(decisions, prompts) {
    document.querySelectorAll(".prompt-col").forEach(function (el) { el.hidden = !prompts; });
    var tbody = document.querySelector("#recent-table tbody");
    if (!decisions.length) {
      fill(tbody, [null], function (tr) {
        cell(tr, "No decisions yet (POST /v1/route and the gateway make them).").colSpan = 7;
      });
      ready("recent", 0);
      return;
    }
    fill(tbody, decisions, function (tr, d) {
      cell(tr, stamp(d.time));
      cell(tr, d.model);
      cell(tr, num(d.probability, 3));
      cell(tr, num(d.cost_weight, 1));
      cell(tr, d.tenant === null ? "–" : d.tenant);
      // a feedback that will not be learned (late, unrouted, none before the window closed) says so, rather than
      // "pending" for ever
      var status = d.quality === null ? d.feedback_status || "pending" : null;
      var quality = cell(tr, status !== null ? status
        : num(d.quality, 2) + (d.feedback_status === "default" ? " (default)" : ""));
      if (status !== null) {
        quality.className = "feedback-" + status;
        quality.title = Object.prototype.hasOwnProperty.call(FEEDBACK_NOTES, status) ? FEEDBACK_NOTES[status] : "";
      }
      if (prompts) { cell(tr, d.prompt === null || d.prompt === undefined ? "–" : d.prompt, "prompt-col"); }
    });
    ready("recent", decisions.length);
  }

  function drawShadows(sh, live) {
    // the rows are made anew: a Promote button under focus is focused again in its new row (the focus fell to the
    // page's start every SHADOW_MS, under a keyboard user about to press it)
    var focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.shadow : undefined;
    drawShadowRows(sh, live);
    if (focused !== undefined) {
      document.querySelectorAll("#shadows-table button[data-shadow]").forEach(function (b) {
        if (b.dataset.shadow === focused) { b.focus(); }
      });
    }
  }

  function drawShadowRows(sh, live) {
    // `n`: the decisions the estimates are on; `left_out`: more with feedback, left out of the live estimate
    var left = sh.left_out ? "; " + sh.left_out + " more with feedback left out: their logged pmfs gave " +
      "probability to a model no policy may route to now" : "";
    var note = sh.reason ? sh.reason + "." :
      "Doubly robust estimates on the newest " + sh.n + " decisions with feedback (of " + sh.window +
      " looked at" + left + "), computed " + clock(sh.computed_at) + ".";
    $("shadows-note").textContent = note;
    // the evaluation's notes on its evidence (default rewards, models no longer routable): a note on the panel,
    // not on a row (an estimate's own overlap warnings are in its promotion reason)
    var notes = $("shadows-warnings");
    notes.textContent = "";
    (sh.warnings || []).forEach(function (w) {
      var li = document.createElement("li");
      li.textContent = w;
      notes.appendChild(li);
    });
    $("shadows-evidence").hidden = !notes.childNodes.length;
    var tbody = document.querySelector("#shadows-table tbody");
    if (!sh.estimates.length) {
      var rows = [{ name: live.policy, role: "live" }].concat(live.shadows.map(function (s) { return { name: s, role: "shadow" }; }));
      fill(tbody, rows, function (tr, r) {
        cell(tr, r.name + (r.role === "live" ? " (live)" : ""));
        cell(tr, "–"); cell(tr, "–"); cell(tr, "");
        promoteCell(tr, r, live);
      });
      ready("shadows", 1);
      return;
    }
    var lows = sh.estimates.map(function (e) { return e.ci_low; }).filter(function (v) { return v !== null; });
    var highs = sh.estimates.map(function (e) { return e.ci_high; }).filter(function (v) { return v !== null; });
    var lo = Math.min.apply(null, lows), hi = Math.max.apply(null, highs);
    var span = hi > lo ? hi - lo : 1;
    fill(tbody, sh.estimates, function (tr, e) {
      cell(tr, e.name + (e.role === "live" ? " (live)" : ""));
      cell(tr, num(e.value, 4));
      cell(tr, "[" + num(e.ci_low, 4) + ", " + num(e.ci_high, 4) + "]");
      var td = cell(tr, "");
      var bar = document.createElement("div");
      bar.className = "interval";
      if (e.ci_low !== null && e.ci_high !== null) {
        var range = document.createElement("span");
        range.style.left = (100 * (e.ci_low - lo) / span) + "%";
        range.style.width = Math.max(1, 100 * (e.ci_high - e.ci_low) / span) + "%";
        bar.appendChild(range);
      }
      if (e.value !== null) {
        var mark = document.createElement("i");
        mark.style.left = (100 * (e.value - lo) / span) + "%";
        bar.appendChild(mark);
      }
      td.appendChild(bar);
      promoteCell(tr, e, live);
    });
    ready("shadows", sh.estimates.length);
  }

  function promoteCell(tr, e, live) {
    var td = cell(tr, "", "promote");
    if (e.role === "live") { td.textContent = "live"; return; }
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = "Promote";
    button.dataset.shadow = e.name;
    button.disabled = !live.can_promote;
    button.title = live.can_promote
      ? (e.reason || "ask the service to promote; it checks the evidence on the whole log")
      : "needs an admin key";
    button.addEventListener("click", function () { promote(e.name, button); });
    td.appendChild(button);
    if (e.reason) {
      var why = document.createElement("div");
      why.className = "note";
      var reason = e.reason.length > 90 ? e.reason.slice(0, 88) + "…" : e.reason;
      why.textContent = (e.promotable ? "would pass: " : "would be refused: ") + reason;
      why.title = e.reason;
      td.appendChild(why);
    }
  }

  function promote(name, button) {
    button.disabled = true;
    request("/v1/policies/promote", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ shadow: name })
    }).then(function (reply) {
      $("shadows-note").textContent = "Promoted " + reply.promoted + " (was " + reply.previous + ").";
      announce($("shadows-note").textContent, true);
      state.shadowsAt = null;
    }).catch(function (err) {
      $("shadows-note").textContent = "Not promoted: " + err.message;
      announce($("shadows-note").textContent, true);
      button.disabled = false;
      button.focus();  // it was disabled while asking, which took the focus from it
    });
  }

  // -- the loop --------------------------------------------------------------------------------------------
  // The replies in order once every request has ended; rejected with the first failure (a refused key before any
  // other, to show the login). Promise.all rejected at the first failure, ending the poll while its other requests
  // still waited (up to TIMEOUT_MS): the next ones piled up on a service that failed one endpoint fast (a 503) and
  // was slow on another.
  function settled(calls) {
    return Promise.allSettled(calls).then(function (results) {
      var failed = results.filter(function (r) { return r.status === "rejected"; })
        .map(function (r) { return r.reason; });
      var auth = failed.filter(function (err) { return err instanceof AuthError; });
      if (failed.length) { throw auth.length ? auth[0] : failed[0]; }
      return results.map(function (r) { return r.value; });
    });
  }

  // One poll at a time: it ends when all its requests have. A refresh `asked` for while one is under way (a click on
  // a range, a key given) runs when it ends; the timer's tick is dropped instead (a service slower than POLL_MS is
  // not asked back to back). A poll's replies are drawn only if the range and the key (`session`) are still those it
  // asked with.
  function refresh(asked) {
    if (state.busy) { state.again = state.again || asked === true; return state.busy; }
    state.again = false;
    var session = state.session, range = state.range;
    var wantShadows = state.shadowsAt === null || performance.now() - state.shadowsAt > SHADOW_MS;
    var calls = [request("/v1/stats/timeseries?range=" + range, {}, TIMEOUT_MS),
                 request("/v1/stats/live", {}, TIMEOUT_MS), request("/v1/stats/recent?limit=25", {}, TIMEOUT_MS),
                 wantShadows ? request("/v1/stats/shadows", {}, TIMEOUT_MS) : Promise.resolve(null),
                 range === "hour" ? Promise.resolve(null)
                   : request("/v1/stats/timeseries?since=-" + RECENT_S + "&step=60", {}, TIMEOUT_MS)];
    state.busy = settled(calls).then(function (replies) {
      if (session !== state.session || range !== state.range) { return; }
      var ts = replies[0], live = replies[1];
      state.last = ts;
      state.live = live;
      showDashboard();
      drawLive(live);
      drawTraffic(ts, replies[4] || ts);
      drawCharts(ts);
      drawModels(ts, live);
      drawRecent(replies[2].decisions, live.store_prompts);
      if (replies[3]) { state.shadowsAt = performance.now(); drawShadows(replies[3], live); }
      state.renders++;
      state.errors = 0;
      state.failure = null;
      state.updatedAt = Date.now();
      state.updatedTick = performance.now();
      $("dashboard").classList.remove("stale");
      $("status").classList.remove("error");
      $("status").textContent = "updated " + new Date().toLocaleTimeString() + " · every " + POLL_MS / 1000 + " s";
      announce("The dashboard is up to date; it updates every " + POLL_MS / 1000 + " s.");
      scrollStops();
    }).catch(function (err) {
      if (session !== state.session) { return; }
      if (err instanceof AuthError) { showLogin(apiKey() ? "The key was refused." : ""); return; }
      if (!(err instanceof Unreachable || err instanceof Refused)) {  // a bug of the page: to the console too
        window.setTimeout(function () { throw err; });
      }
      state.errors++;
      state.failure = err.message;
      showFailure(err);
    }).then(function () {
      state.busy = false;
      if (state.again && state.timer) { refresh(true); }
    });
    return state.busy;
  }

  // The service did not give the data: say why and since when, and grey what is shown (the last good answer).
  function showFailure(err) {
    var why = err instanceof Unreachable ? err.message
      : err instanceof Refused ? "the service answers: " + err.message : "the page failed: " + err;
    var since = state.updatedAt === null ? "" :
      " · showing " + new Date(state.updatedAt).toLocaleTimeString() + " (" +
      Math.round((performance.now() - state.updatedTick) / 1000) + " s ago)";
    $("dashboard").classList.toggle("stale", state.updatedAt !== null);
    $("status").classList.add("error");
    $("status").textContent = why + since + "; retrying every " + POLL_MS / 1000 + " s";
    announce("The dashboard is not updating: " + why + ".");
  }

  // Polls every POLL_MS until the login is shown, whether or not the first poll got an answer.
  function schedule() {
    if (state.timer) { window.clearInterval(state.timer); }
    state.timer = window.setInterval(function () { refresh(false); }, POLL_MS);
  }

  function showDashboard() {
    // the login's button had the focus and is hidden: the focus goes to the dashboard, not back to the page's start
    var fromLogin = !$("login").hidden && ($("login").contains(document.activeElement) ||
                                           document.activeElement === document.body);
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("ranges").hidden = false;
    $("logout").hidden = !apiKey();
    if (fromLogin) { $("dashboard").focus(); }
  }

  function showLogin(message) {
    if (state.timer) { window.clearInterval(state.timer); state.timer = null; }
    state.session++;  // a poll under way with the old key draws nothing
    state.updatedAt = null;
    $("dashboard").classList.remove("stale");
    $("status").classList.remove("error");
    window.sessionStorage.removeItem(KEY);
    $("dashboard").hidden = true;
    $("ranges").hidden = true;
    $("logout").hidden = true;
    $("policy").textContent = "";
    $("status").textContent = "";
    announce("");
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("key").focus();
  }

  function setRange(range) {
    state.range = range;
    document.querySelectorAll("#ranges button").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.range === range));
    });
    refresh(true);
  }

  function start() {
    document.querySelectorAll("#ranges button").forEach(function (b) {
      b.addEventListener("click", function () { setRange(b.dataset.range); });
    });
    $("login-form").addEventListener("submit", function (event) {
      event.preventDefault();
      // Keys are printable ASCII without spaces. fetch refuses a header with a character beyond Latin-1 before it
      // asks (a pasted “quote”): that read as "cannot reach the service", retried for ever
      var key = $("key").value.trim(), odd = key.match(/[^\x21-\x7e]/u);
      if (odd) {
        $("login-error").textContent = "A key is printable ASCII without spaces; this one holds " + odd[0] + " (U+" +
          odd[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "): was something pasted with it?";
        return;
      }
      window.sessionStorage.setItem(KEY, key);
      $("key").value = "";
      state.session++;
      schedule();
      refresh(true);
    });
    $("logout").addEventListener("click", function () { showLogin(""); });
    window.addEventListener("resize", function () {
      Object.keys(state.charts).forEach(function (id) {
        var el = $(id);
        state.charts[id].setSize({ width: chartWidth(el), height: state.charts[id].height });
      });
      scrollStops();
    });
    schedule();  // a refused key stops it (showLogin); a service that does not answer yet is asked again
    refresh(true);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
