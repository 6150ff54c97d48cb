// The tower-tiered-cache admin dashboard, served by AdminService at
// {admin}/dashboard.js beside the page. It talks only to the admin API next
// to it (relative URLs, so any prefix works), with the token the user gives
// once (sessionStorage, this tab only) as `Authorization: Bearer`.
//
// Whatever comes from the API (label names, keys, reasons, messages) goes
// into the page as text (textContent, attribute values), never as markup.
'use strict';

(function () {
  const TOKEN_KEY = 'tower-tiered-cache.admin-token';
  /** Every request to the API is abandoned after this long. */
  const REQUEST_TIMEOUT_MS = 5000;
  /** How often the page polls unless `?poll=MS` says otherwise. */
  const DEFAULT_POLL_MS = 2000;
  const MIN_POLL_MS = 250;
  const MAX_POLL_MS = 60000;
  /** The span of the charts. */
  const HISTORY_MS = 5 * 60 * 1000;
  /** The rolling window of the hit ratio chart. */
  const RATIO_WINDOW_MS = 10000;
  /** A warming job is followed this often, this many times at most. */
  const WARM_POLL_MS = 1000;
  const WARM_MAX_POLLS = 3600;
  /** How long the "everything" invalidation stays armed. */
  const ARM_MS = 5000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  /** Requests by result and tier: the stats field, its name, its colour class. */
  const RESULTS = [
    ['hits_l1', 'hit L1', 's-hit-l1'],
    ['hits_l2', 'hit L2', 's-hit-l2'],
    ['stale', 'stale', 's-stale'],
    ['revalidated', 'revalidated', 's-revalidated'],
    ['coalesced', 'coalesced', 's-coalesced'],
    ['misses', 'miss', 's-miss'],
    ['passes', 'pass', 's-pass'],
  ];

  const pollMs = (() => {
    const asked = Number(new URLSearchParams(window.location.search).get('poll'));
    if (!Number.isFinite(asked) || asked <= 0) return DEFAULT_POLL_MS;
    return Math.min(MAX_POLL_MS, Math.max(MIN_POLL_MS, Math.round(asked)));
  })();

  /** Successive /stats answers: {t: ms, s: stats}. */
  let history = [];
  let polls = 0;
  let timer = null;
  let running = false;
  /** Problems shown at the top: the last poll's, and errors the page hit. */
  let pollProblem = '';
  const pageProblems = [];

  const $ = (id) => document.getElementById(id);

  // --- Formatting -------------------------------------------------------

  function fmtInt(n) {
    if (typeof n !== 'number' || !Number.isFinite(n)) return '–';
    return String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  }

  function fmtPct(r) {
    if (typeof r !== 'number' || !Number.isFinite(r)) return '–';
    return (r * 100).toFixed(1) + ' %';
  }

  function fmtMs(ms) {
    if (typeof ms !== 'number' || !Number.isFinite(ms)) return '–';
    if (ms >= 100) return ms.toFixed(0);
    if (ms >= 1) return ms.toFixed(2);
    return ms.toFixed(3);
  }

  function fmtRate(r) {
    if (typeof r !== 'number' || !Number.isFinite(r)) return '–';
    return r >= 100 ? r.toFixed(0) : r.toFixed(1);
  }

  /** An axis value: three significant digits at most, no trailing zeros. */
  function fmtTick(v) {
    return String(Number(v.toPrecision(3)));
  }

  function fmtBytes(n) {
    if (typeof n !== 'number' || !Number.isFinite(n)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
  }

  function fmtTime(ms) {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms <= 0) return '–';
    return new Date(ms).toLocaleTimeString();
  }

  function fmtState(state) {
    return typeof state === 'string' ? state.replace('_', '-') : '–';
  }

  // --- The DOM, as text only --------------------------------------------

  /** Shows `value` in element `id`: formatted as text, raw in data-raw. */
  function show(id, value, format) {
    const e = $(id);
    if (!e) return;
    e.dataset.raw = value === null || value === undefined ? '' : String(value);
    e.textContent = (format || fmtInt)(value);
  }

  function text(id, value) {
    const e = $(id);
    if (e) e.textContent = value === null || value === undefined ? '–' : String(value);
  }

  function badge(id, state, label) {
    const e = $(id);
    if (!e) return;
    e.dataset.state = typeof state === 'string' ? state : 'unknown';
    e.textContent = label === undefined ? fmtState(state) : label;
  }

  function element(tag, className, content) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (content !== undefined && content !== null) e.textContent = String(content);
    return e;
  }

  function svgElement(tag, attrs, content) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (content !== undefined) e.textContent = String(content);
    return e;
  }

  function row(cells) {
    const tr = document.createElement('tr');
    for (const c of cells) {
      if (c instanceof Node) {
        const td = document.createElement('td');
        td.appendChild(c);
        tr.appendChild(td);
      } else {
        tr.appendChild(element('td', null, c));
      }
    }
    return tr;
  }

  function renderProblems() {
    const all = pollProblem ? [pollProblem].concat(pageProblems) : pageProblems.slice();
    $('problems').textContent = all.join('\n');
  }

  function pageProblem(message) {
    if (pageProblems.length < 10 && !pageProblems.includes(message)) pageProblems.push(message);
    renderProblems();
  }

  // --- The API ----------------------------------------------------------

  class AuthError extends Error {}

  /** `method` `path` (relative to the page) with the token; {status, body}. */
  async function api(path, method, body) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const controller = new AbortController();
    const deadline = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const resp = await fetch(path, {
        method: method || 'GET',
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
        signal: controller.signal,
      });
      const raw = await resp.text();
      if (resp.status === 401) throw new AuthError('the admin token was refused');
      let json = null;
      try {
        json = raw ? JSON.parse(raw) : null;
      } catch (e) {
        json = null;
      }
      return { status: resp.status, body: json };
    } catch (e) {
      if (e instanceof AuthError) throw e;
      if (e && e.name === 'AbortError') throw new Error(path + ': no answer within ' + REQUEST_TIMEOUT_MS + ' ms');
      throw new Error(path + ': ' + (e && e.message ? e.message : String(e)));
    } finally {
      clearTimeout(deadline);
    }
  }

  /** The body of a 2xx answer, else an error naming the status. */
  function expectOk(what, answer) {
    if (answer.status >= 200 && answer.status < 300) return answer.body;
    const why = answer.body && typeof answer.body.error === 'string' ? answer.body.error : 'HTTP ' + answer.status;
    throw new Error(what + ': ' + why);
  }

  // --- History and derived series ---------------------------------------

  function lookupsOf(s) {
    return s.hits + s.stale + s.misses + s.revalidated + s.coalesced;
  }

  function remember(stats) {
    const now = Date.now();
    const last = history[history.length - 1];
    // Counters went back (reset-stats): the old points mean nothing now.
    if (last && stats.requests < last.s.requests) history = [];
    history.push({ t: now, s: stats });
    const oldest = now - HISTORY_MS - RATIO_WINDOW_MS;
    while (history.length > 2 && history[0].t < oldest) history.shift();
  }

  /** Per-second rates of each result between successive polls. */
  function rateSeries() {
    const series = RESULTS.map(([key, name, cls]) => ({ key, name, cls, points: [] }));
    for (let i = 1; i < history.length; i += 1) {
      const a = history[i - 1];
      const b = history[i];
      const dt = (b.t - a.t) / 1000;
      if (dt <= 0) continue;
      for (const s of series) s.points.push([b.t, Math.max(0, (b.s[s.key] - a.s[s.key]) / dt)]);
    }
    return series;
  }

  /** The hit ratio over the last RATIO_WINDOW_MS at each poll (null: no lookups). */
  function ratioSeries() {
    const points = [];
    let j = 0;
    for (let i = 1; i < history.length; i += 1) {
      const b = history[i];
      while (j < i - 1 && b.t - history[j + 1].t >= RATIO_WINDOW_MS) j += 1;
      const a = history[j];
      const lookups = lookupsOf(b.s) - lookupsOf(a.s);
      const served = b.s.hits + b.s.stale - (a.s.hits + a.s.stale);
      points.push([b.t, lookups > 0 ? served / lookups : null]);
    }
    return points;
  }

  /** Requests per second over the last two polls. */
  function currentRate(key) {
    if (history.length < 2) return null;
    const a = history[history.length - 2];
    const b = history[history.length - 1];
    const dt = (b.t - a.t) / 1000;
    return dt > 0 ? Math.max(0, (b.s[key] - a.s[key]) / dt) : null;
  }

  // --- Charts (SVG drawn here) ------------------------------------------

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /**
   * Draws `series` ([{cls, points: [[t, v|null]]}]) into `svg`: lines, or
   * stacked areas. `yMax` fixes the scale; else it fits the data.
   */
  function drawChart(svg, series, opts) {
    // Drawn at the size it is shown, so the text is not stretched.
    const box = svg.getBoundingClientRect();
    const width = Math.round(box.width) || 600;
    const height = Math.round(box.height) || 200;
    const left = 46;
    const right = 8;
    const top = 8;
    const bottom = 18;
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    svg.replaceChildren();
    const all = series.flatMap((s) => s.points);
    if (all.length === 0) {
      svg.appendChild(svgElement('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'empty' }, 'waiting for a second poll…'));
      return;
    }
    const tEnd = all.reduce((m, p) => Math.max(m, p[0]), 0);
    const tFirst = all.reduce((m, p) => Math.min(m, p[0]), Infinity);
    const span = Math.min(HISTORY_MS, Math.max(30000, tEnd - tFirst));
    const tStart = tEnd - span;
    let top_ = opts.yMax;
    if (top_ === undefined) {
      let max = 0;
      if (opts.stacked) {
        const n = series[0].points.length;
        for (let i = 0; i < n; i += 1) max = Math.max(max, series.reduce((sum, s) => sum + (s.points[i][1] || 0), 0));
      } else {
        for (const p of all) if (p[1] !== null) max = Math.max(max, p[1]);
      }
      top_ = niceMax(max);
    }
    const x = (t) => left + ((t - tStart) / span) * (width - left - right);
    const y = (v) => top + (1 - Math.min(v, top_) / top_) * (height - top - bottom);
    for (let k = 0; k <= 4; k += 1) {
      const v = (top_ * k) / 4;
      svg.appendChild(svgElement('line', { x1: left, x2: width - right, y1: y(v), y2: y(v), class: 'grid-line' }));
      svg.appendChild(svgElement('text', { x: left - 4, y: y(v) + 3, 'text-anchor': 'end', class: 'axis-label' }, opts.yFormat(v)));
    }
    svg.appendChild(svgElement('text', { x: left, y: height - 4, class: 'axis-label' }, '−' + Math.round(span / 1000) + ' s'));
    svg.appendChild(svgElement('text', { x: width - right, y: height - 4, 'text-anchor': 'end', class: 'axis-label' }, 'now'));
    if (opts.stacked) drawStacked(svg, series, x, y);
    else for (const s of series) drawLine(svg, s, x, y);
  }

  function drawLine(svg, s, x, y) {
    let d = '';
    let pen = false;
    for (const [t, v] of s.points) {
      if (v === null) {
        pen = false;
        continue;
      }
      d += (pen ? 'L' : 'M') + x(t).toFixed(1) + ' ' + y(v).toFixed(1) + ' ';
      pen = true;
    }
    if (d) svg.appendChild(svgElement('path', { d, class: 'line ' + s.cls }));
  }

  function drawStacked(svg, series, x, y) {
    const n = series[0].points.length;
    const base = new Array(n).fill(0);
    for (const s of series) {
      const upper = s.points.map((p, i) => base[i] + (p[1] || 0));
      if (upper.some((v, i) => v > base[i])) {
        let d = '';
        for (let i = 0; i < n; i += 1) d += (i ? 'L' : 'M') + x(s.points[i][0]).toFixed(1) + ' ' + y(upper[i]).toFixed(1) + ' ';
        for (let i = n - 1; i >= 0; i -= 1) d += 'L' + x(s.points[i][0]).toFixed(1) + ' ' + y(base[i]).toFixed(1) + ' ';
        svg.appendChild(svgElement('path', { d: d + 'Z', class: 'area ' + s.cls }));
      }
      for (let i = 0; i < n; i += 1) base[i] = upper[i];
    }
  }

  function legend(id, series) {
    const box = $(id);
    if (box.childElementCount === series.length) return;
    box.replaceChildren();
    for (const s of series) {
      const item = element('span');
      item.appendChild(element('span', 'swatch ' + s.cls));
      item.appendChild(document.createTextNode(s.name));
      box.appendChild(item);
    }
  }

  /** A horizontal bar of `value` out of `max`. */
  function drawBar(svg, value, max, high) {
    svg.setAttribute('viewBox', '0 0 100 10');
    svg.setAttribute('preserveAspectRatio', 'none');
    const share = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
    svg.replaceChildren(
      svgElement('rect', { x: 0, y: 0, width: 100, height: 10, class: 'track' }),
      svgElement('rect', { x: 0, y: 0, width: (share * 100).toFixed(2), height: 10, class: share >= high ? 'fill high' : 'fill' }),
    );
  }

  // --- Rendering ----------------------------------------------------------

  function renderTiles(s) {
    show('hit-ratio', s.hit_ratio, fmtPct);
    show('window-hit-ratio', s.window ? s.window.hit_ratio : null, fmtPct);
    show('requests', s.requests);
    show('request-rate', currentRate('requests'), fmtRate);
    for (const [id, key] of [
      ['hits', 'hits'], ['hits-l1', 'hits_l1'], ['hits-l2', 'hits_l2'], ['misses', 'misses'],
      ['coalesced', 'coalesced'], ['stale', 'stale'], ['stale-if-error', 'stale_if_error'],
      ['passes', 'passes'], ['revalidated', 'revalidated'], ['upstream-calls', 'upstream_calls'],
      ['upstream-errors', 'upstream_errors'], ['upstream-timeouts', 'upstream_timeouts'],
      ['in-flight', 'in_flight'], ['stores', 'stores'],
    ]) {
      show(id, s[key]);
    }
  }

  function renderCharts() {
    drawChart($('chart-ratio'), [{ cls: 's-ratio', points: ratioSeries() }], { yMax: 1, yFormat: (v) => Math.round(v * 100) + ' %' });
    const rates = rateSeries();
    drawChart($('chart-rate'), rates, { stacked: true, yFormat: fmtTick });
    legend('legend-rate', rates);
    const latency = [
      { name: 'hit p99', cls: 's-hit-l1', points: history.map((h) => [h.t, h.s.hit_latency.p99_ms]) },
      { name: 'miss p99', cls: 's-miss', points: history.map((h) => [h.t, h.s.miss_latency.p99_ms]) },
    ];
    drawChart($('chart-latency'), latency, { yFormat: (v) => fmtTick(v) + ' ms' });
    legend('legend-latency', latency);
  }

  function renderLatency(s) {
    for (const [prefix, l] of [['hit', s.hit_latency], ['miss', s.miss_latency]]) {
      show(prefix + '-count', l.count);
      show(prefix + '-mean', l.mean_ms, fmtMs);
      show(prefix + '-p50', l.p50_ms, fmtMs);
      show(prefix + '-p95', l.p95_ms, fmtMs);
      show(prefix + '-p99', l.p99_ms, fmtMs);
    }
  }

  function renderL1(s) {
    show('l1-bytes', s.l1_bytes, fmtBytes);
    show('l1-capacity', s.l1_capacity_bytes, fmtBytes);
    show('l1-fill', s.l1_capacity_bytes > 0 ? s.l1_bytes / s.l1_capacity_bytes : null, fmtPct);
    show('l1-entries', s.l1_entries);
    show('evictions', s.evictions);
    show('eviction-rate', currentRate('evictions'), fmtRate);
    show('l1-not-admitted', s.l1_not_admitted);
    show('avg-ttl', s.avg_ttl_remaining_ms, (v) => (typeof v === 'number' ? (v / 1000).toFixed(1) + ' s' : '–'));
    drawBar($('l1-bar'), s.l1_bytes, s.l1_capacity_bytes, 0.95);
  }

  function renderL2(s, info) {
    const present = s.l2_breaker !== null && s.l2_breaker !== undefined;
    $('l2-none').hidden = present;
    $('l2-facts').hidden = !present;
    if (!present) return;
    text('l2-server', info && info.l2 ? info.l2.server + ' (namespace ' + info.l2.namespace + ')' : '–');
    badge('l2-breaker', s.l2_breaker);
    text('l2-subscribed', s.l2_subscribed ? 'followed (L1 coherent)' : 'not followed');
    show('l2-errors', s.l2_errors);
    show('l2-timeouts', s.l2_timeouts);
    show('l2-decode-errors', s.l2_decode_errors);
    show('l2-writes', s.l2_writes);
    show('l2-writes-dropped', s.l2_writes_dropped);
    show('promotions', s.promotions);
    show('redis-memory', s.redis ? s.redis.used_memory : null, fmtBytes);
    show('redis-keys', s.redis ? s.redis.keys : null);
  }

  function renderHealth(h) {
    const status = h && typeof h.status === 'string' ? h.status : 'unknown';
    badge('health-badge', status, 'health: ' + status);
    badge('health-status', status, status);
    const list = $('health-reasons');
    list.replaceChildren();
    for (const reason of (h && Array.isArray(h.reasons) ? h.reasons : [])) list.appendChild(element('li', null, reason));
    if (!h) return;
    show('health-window-ratio', h.window_hit_ratio, fmtPct);
    show('health-window-lookups', h.window_lookups);
    show('health-mean', h.mean_latency_ms, (v) => fmtMs(v) + ' ms');
    show('health-p95', h.p95_latency_ms, (v) => fmtMs(v) + ' ms');
  }

  function renderBreakers(s, breakers) {
    badge('breaker-l2', s.l2_breaker === null || s.l2_breaker === undefined ? 'none' : s.l2_breaker,
      s.l2_breaker === null || s.l2_breaker === undefined ? 'no L2' : undefined);
    badge('breaker-upstream', s.breaker);
    show('breaker-opens', s.breaker_opens);
    const body = $('breakers');
    body.replaceChildren();
    for (const b of breakers) {
      const state = element('span', 'badge', fmtState(b.state));
      state.dataset.state = b.state;
      body.appendChild(row([b.label, state, fmtTime(b.since_ms), fmtTime(b.probe_at_ms), fmtInt(b.consecutive_failures), fmtInt(b.opens)]));
    }
    $('breakers-closed').hidden = breakers.length > 0;
  }

  function ratioCell(r) {
    const box = element('span', 'ratio-cell');
    const bar = svgElement('svg', { 'aria-hidden': 'true', class: 'bar mini' });
    drawBar(bar, r, 1, 2);
    box.appendChild(bar);
    box.appendChild(element('span', null, fmtPct(r)));
    return box;
  }

  function renderLabels(labels, breakers) {
    const open = new Map(breakers.map((b) => [b.label, b.state]));
    const body = $('labels');
    body.replaceChildren();
    for (const l of labels) {
      const label = element('span', null, l.label);
      const state = open.get(l.label) || 'closed';
      const breaker = element('span', 'badge', fmtState(state));
      breaker.dataset.state = state;
      const tr = row([label, fmtInt(l.requests), ratioCell(l.hit_ratio), fmtInt(l.hits_l1), fmtInt(l.hits_l2),
        fmtInt(l.stale), fmtInt(l.misses), fmtInt(l.coalesced), fmtInt(l.passes), fmtMs(l.mean_latency_ms),
        fmtInt(l.upstream_errors), breaker]);
      tr.firstChild.className = 'label';
      tr.dataset.label = l.label;
      body.appendChild(tr);
    }
  }

  function renderLowPerformers(list) {
    const box = $('low-performers');
    box.replaceChildren();
    for (const p of list) {
      const item = element('div', 'performer');
      const title = element('h3');
      title.appendChild(element('span', 'name', p.stats.label));
      title.appendChild(element('span', 'muted', ' — hit ratio ' + fmtPct(p.stats.hit_ratio) + ' over ' + fmtInt(p.stats.requests) + ' requests'));
      item.appendChild(title);
      const recs = element('ul');
      for (const r of p.recommendations) {
        const li = element('li');
        li.appendChild(element('span', 'kind', r.kind));
        li.appendChild(element('span', 'message', r.message));
        recs.appendChild(li);
      }
      if (p.recommendations.length === 0) recs.appendChild(element('li', 'muted', 'No suggestion from its counters.'));
      item.appendChild(recs);
      box.appendChild(item);
    }
    $('low-performers-none').hidden = list.length > 0;
  }

  function renderInfo(info) {
    if (!info) return;
    text('version', 'v' + info.version);
    text('info-mode', info.mode + ' cache, observability ' + (info.observability ? 'on' : 'off'));
    text('info-labels', info.labels ? info.labels.source + ', ' + info.labels.in_use + ' of ' + info.labels.max_labels : '–');
  }

  // --- Polling ------------------------------------------------------------

  let info = null;

  async function poll() {
    const [stats, health, breakers, low] = await Promise.all([
      api('stats'), api('health'), api('breakers'), api('stats/low-performers'),
    ]);
    const s = expectOk('/stats', stats);
    // /health answers 503 while degraded: still the report.
    const h = health.body && typeof health.body.status === 'string' ? health.body : null;
    if (!h) expectOk('/health', health);
    const b = expectOk('/breakers', breakers) || [];
    const lp = expectOk('/stats/low-performers', low) || [];
    if (info === null || polls % 15 === 0) info = expectOk('/info', await api('info'));
    remember(s);
    renderTiles(s);
    renderCharts();
    renderLatency(s);
    renderL1(s);
    renderL2(s, info);
    renderHealth(h);
    renderBreakers(s, b);
    renderLabels(Array.isArray(s.labels) ? s.labels : [], b);
    renderLowPerformers(lp);
    renderInfo(info);
    polls += 1;
    show('poll-count', polls);
    text('updated', 'updated ' + new Date().toLocaleTimeString());
  }

  async function tick() {
    timer = null;
    if (!running) return;
    try {
      await poll();
      pollProblem = '';
    } catch (e) {
      if (e instanceof AuthError) {
        stop('The admin token is no longer accepted: enter it again.');
        return;
      }
      pollProblem = 'poll failed: ' + e.message;
    }
    renderProblems();
    if (running) timer = setTimeout(tick, pollMs);
  }

  function start() {
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('logout').hidden = sessionStorage.getItem(TOKEN_KEY) === null;
    if (running) return;
    running = true;
    tick();
  }

  function stop(message) {
    running = false;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    pollProblem = '';
    renderProblems();
    sessionStorage.removeItem(TOKEN_KEY);
    $('dashboard').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('token').value = '';
    $('token').focus();
  }

  // --- The token ------------------------------------------------------------

  async function login(event) {
    event.preventDefault();
    const token = $('token').value.trim();
    // Visible ASCII only, as the service requires.
    if (!/^[\x21-\x7e]+$/.test(token)) {
      $('login-error').textContent = 'A token is visible ASCII characters, no spaces.';
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('login-button').disabled = true;
    try {
      expectOk('/info', await api('info'));
      $('login-error').textContent = '';
      start();
    } catch (e) {
      if (e instanceof AuthError) stop('That token was refused.');
      else $('login-error').textContent = e.message;
    } finally {
      $('login-button').disabled = false;
    }
  }

  /**
   * With a stored token, or a service without one, straight in; else ask.
   * A service that does not answer yet is polled anyway (the failure is
   * shown at the top until it answers): only a refusal asks for a token.
   */
  async function begin() {
    try {
      expectOk('/info', await api('info'));
      start();
    } catch (e) {
      if (e instanceof AuthError) stop(sessionStorage.getItem(TOKEN_KEY) === null ? '' : 'The stored token was refused.');
      else start();
    }
  }

  // --- Actions ----------------------------------------------------------------

  let armed = null;

  function disarm() {
    if (armed !== null) clearTimeout(armed);
    armed = null;
    $('inv-button').classList.remove('armed');
    $('inv-button').textContent = 'Invalidate';
  }

  async function invalidate(event) {
    event.preventDefault();
    const out = $('inv-result');
    const kind = $('inv-kind').value;
    const value = $('inv-value').value.trim();
    const values = $('inv-values').value.trim();
    const body = {};
    if (kind === 'all') {
      if (armed === null) {
        $('inv-button').classList.add('armed');
        $('inv-button').textContent = 'Click again to invalidate everything';
        armed = setTimeout(disarm, ARM_MS);
        return;
      }
      body.all = true;
    } else {
      if (!value) {
        out.className = 'result error';
        out.textContent = 'Give a ' + kind + '.';
        return;
      }
      body[kind] = value;
    }
    disarm();
    if (values) body.values = values;
    out.className = 'result';
    out.textContent = 'invalidating…';
    try {
      const removed = expectOk('/invalidate', await api('invalidate', 'POST', body));
      const l2 = removed && removed.l2 !== null && removed.l2 !== undefined ? fmtInt(removed.l2) : 'in the background';
      out.textContent = 'removed: L1 ' + fmtInt(removed ? removed.l1 : null) + ', L2 ' + l2;
      out.dataset.l1 = removed ? String(removed.l1) : '';
    } catch (e) {
      if (e instanceof AuthError) return stop('The admin token is no longer accepted: enter it again.');
      out.className = 'result error';
      out.textContent = e.message;
    }
    return undefined;
  }

  function describeJob(job) {
    const p = job.progress || {};
    let line = 'job ' + job.id + ': ' + job.state + ', ' + fmtInt(p.done) + ' of ' + fmtInt(p.total) +
      ' (warmed ' + fmtInt(p.warmed) + ', fresh already ' + fmtInt(p.skipped) + ', failed ' + fmtInt(p.failed) + ')';
    if (job.state === 'done' && job.report) line += ' in ' + fmtInt(job.report.duration_ms) + ' ms';
    if (job.state === 'failed' && job.error) line += ': ' + job.error;
    if (job.report && Array.isArray(job.report.failed)) {
      for (const f of job.report.failed.slice(0, 5)) line += '\n  ' + f.url + ': ' + f.reason;
    }
    return line;
  }

  async function warm(event) {
    event.preventDefault();
    const out = $('warm-result');
    const targets = $('warm-urls').value.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    if (targets.length === 0) {
      out.className = 'result error';
      out.textContent = 'Give one URL per line.';
      return;
    }
    const concurrency = Number($('warm-concurrency').value) || 8;
    out.className = 'result';
    out.textContent = 'starting…';
    $('warm-button').disabled = true;
    try {
      const started = expectOk('/warm', await api('warm', 'POST', { targets, concurrency }));
      const id = encodeURIComponent(String(started.id));
      for (let i = 0; i < WARM_MAX_POLLS; i += 1) {
        const job = expectOk('/warm/' + id, await api('warm/' + id));
        out.textContent = describeJob(job);
        out.dataset.state = job.state;
        if (job.state !== 'running') return;
        await new Promise((resolve) => setTimeout(resolve, WARM_POLL_MS));
      }
      out.textContent += '\n(no longer followed: see GET warm/' + id + ')';
    } catch (e) {
      if (e instanceof AuthError) {
        stop('The admin token is no longer accepted: enter it again.');
        return;
      }
      out.className = 'result error';
      out.textContent = e.message;
    } finally {
      $('warm-button').disabled = false;
    }
  }

  // --- Start ----------------------------------------------------------------

  document.addEventListener('securitypolicyviolation', (e) => {
    pageProblem('blocked by the content security policy: ' + e.violatedDirective + ' ' + e.blockedURI);
  });
  window.addEventListener('error', (e) => pageProblem('page error: ' + e.message));
  window.addEventListener('unhandledrejection', (e) => pageProblem('page error: ' + (e.reason && e.reason.message ? e.reason.message : String(e.reason))));

  document.addEventListener('DOMContentLoaded', () => {
    text('poll-ms', pollMs);
    text('ratio-window', RATIO_WINDOW_MS / 1000);
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', () => stop(''));
    $('invalidate-form').addEventListener('submit', invalidate);
    $('inv-kind').addEventListener('change', () => {
      disarm();
      const kind = $('inv-kind').value;
      $('inv-value').disabled = kind === 'all';
      $('inv-value').placeholder = { prefix: '/items/', tag: 'a tag', key: 'a key, as stored', all: '' }[kind] || '';
    });
    $('warm-form').addEventListener('submit', warm);
    begin();
  });
})();
