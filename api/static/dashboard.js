// Marcador supervisor dashboard: plain JS, no build step. Data from the REST API (same bearer tokens), live
// updates from the SSE stream read with fetch() (EventSource cannot send an Authorization header), and a full
// refresh every 2 s that corrects whatever the events only approximate.
'use strict';

(() => {
  const TOKEN_KEY = 'marcador.token';
  const REFRESH_MS = 2000;
  const EVENT_TYPES = 'agent.,call.,campaign.';
  // Agents that count as logged in for lines per agent (connecting agents are not in their room yet).
  const LOGGED_IN = ['ready', 'on_call', 'wrapup', 'paused', 'preview'];

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    authNeeded: false,
    campaigns: new Map(), // id -> {info, stats, dids}
    agents: new Map(), // id -> agent view
    cards: new Map(), // id -> element refs of the campaign's card
    agentRows: new Map(), // id -> element refs of the agent's row
    skew: 0, // server clock - browser clock, seconds (from the Date header; only adopted when clearly off)
    lastEventId: null,
    streaming: false,
    renderQueued: false,
  };

  class AuthError extends Error {}

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const nowS = () => Date.now() / 1000 + state.skew;
  const enc = encodeURIComponent;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  const pct = (x) => (x === null || x === undefined ? '–' : (100 * x).toFixed(1) + '%');

  function duration(s) {
    s = Math.max(0, Math.floor(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const two = (n) => String(n).padStart(2, '0');
    if (h) return `${h}:${two(m)}:${two(sec)}`;
    if (m) return `${m}:${two(sec)}`;
    return `${sec}s`;
  }

  function setError(msg) {
    $('error').textContent = msg || '';
  }

  function noteClock(resp) {
    const date = resp.headers.get('Date');
    if (!date) return;
    const skew = Date.parse(date) / 1000 + 0.5 - Date.now() / 1000; // Date has 1 s resolution
    if (Number.isFinite(skew) && Math.abs(skew - state.skew) > 1.5) state.skew = skew;
  }

  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    if (state.token) h.Authorization = 'Bearer ' + state.token;
    return h;
  }

  async function api(method, path, body) {
    const headers = authHeaders(body === undefined ? {} : { 'Content-Type': 'application/json' });
    const resp = await fetch(path, {
      method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body),
    });
    noteClock(resp);
    if (resp.status === 401) {
      askToken(state.token ? 'that token was refused' : '');
      throw new AuthError('401');
    }
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const j = await resp.json();
        detail = typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail);
      } catch (_) { /* not JSON */ }
      throw new Error(`${method} ${path}: ${resp.status} ${detail}`);
    }
    return resp.status === 204 ? null : resp.json();
  }

  // ------------------------------------------------------------------ token

  function askToken(msg) {
    state.authNeeded = true;
    $('token-form').hidden = false;
    $('token-error').textContent = msg || '';
    $('token-input').focus();
  }

  function useToken(token) {
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    $('forget-token').hidden = !token;
    state.authNeeded = false;
    $('token-form').hidden = true;
  }

  // ------------------------------------------------------------------ data

  async function refresh() {
    if (state.authNeeded) return;
    try {
      const [camps, agents] = await Promise.all([api('GET', 'api/v1/campaigns'), api('GET', 'api/v1/agents')]);
      const rows = await Promise.all(camps.map(async (info) => {
        const base = `api/v1/campaigns/${enc(info.campaign_id)}`;
        // A campaign not loaded in this node's core has no stats yet: show its settings alone.
        const [stats, dids] = await Promise.all([
          api('GET', base + '/stats').catch((e) => { if (e instanceof AuthError) throw e; return null; }),
          api('GET', base + '/dids').catch((e) => { if (e instanceof AuthError) throw e; return []; }),
        ]);
        return { info, stats, dids };
      }));
      // Webhook events kept after being given up (supervisor and admin may read them; others see nothing here).
      const kept = await api('GET', 'api/v1/webhooks/failed?limit=1').catch((e) => {
        if (e instanceof AuthError) throw e;
        return null;
      });
      const keptLine = $('webhooks-kept');
      keptLine.hidden = !(kept && kept.kept > 0);
      keptLine.textContent = kept && kept.kept > 0 ? `${kept.kept} webhook events kept to redeliver` : '';
      state.campaigns = new Map(rows.map((r) => [r.info.campaign_id, r]));
      state.agents = new Map(agents.map((a) => [a.agent_id, a]));
      $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      setError('');
      render();
      if (!state.streaming) stream();
    } catch (e) {
      if (!(e instanceof AuthError)) setError(String(e.message || e));
    }
  }

  // Server-sent events over fetch(): the Authorization header goes along; Last-Event-ID resumes after a drop.
  async function stream() {
    state.streaming = true;
    try {
      while (!state.authNeeded) {
        try {
          const headers = authHeaders({ Accept: 'text/event-stream' });
          if (state.lastEventId !== null) headers['Last-Event-ID'] = String(state.lastEventId);
          const resp = await fetch('api/v1/events?types=' + enc(EVENT_TYPES), { headers, cache: 'no-store' });
          if (resp.status === 401) {
            askToken('that token was refused');
            return;
          }
          if (!resp.ok || !resp.body) throw new Error('events: ' + resp.status);
          setLive(true);
          const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
          let buf = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value.replace(/\r\n?/g, '\n');
            let cut;
            while ((cut = buf.indexOf('\n\n')) >= 0) {
              onFrame(buf.slice(0, cut));
              buf = buf.slice(cut + 2);
            }
          }
        } catch (_) { /* dropped: retry below */ }
        setLive(false);
        await sleep(REFRESH_MS);
      }
    } finally {
      state.streaming = false;
      setLive(false);
    }
  }

  function setLive(on) {
    $('live').className = 'dot ' + (on ? 'on' : 'off');
  }

  function onFrame(frame) {
    let kind = 'message', data = '', id = null;
    for (const line of frame.split('\n')) {
      if (line.startsWith(':')) continue; // comment / keep-alive
      const sep = line.indexOf(':');
      const key = sep < 0 ? line : line.slice(0, sep);
      const value = sep < 0 ? '' : line.slice(sep + 1).replace(/^ /, '');
      if (key === 'event') kind = value;
      else if (key === 'data') data += (data ? '\n' : '') + value;
      else if (key === 'id') id = value;
    }
    if (id !== null && /^\d+$/.test(id)) state.lastEventId = Number(id);
    if (!data) return;
    let ev;
    try { ev = JSON.parse(data); } catch (_) { return; }
    apply(kind, ev);
  }

  // Events move the numbers at once; the 2 s refresh then replaces them with the core's own.
  function apply(kind, ev) {
    if (kind === 'agent.state') {
      const a = state.agents.get(ev.agent_id) || { agent_id: ev.agent_id, call_id: null };
      state.agents.set(ev.agent_id, Object.assign({}, a, { state: ev.state, reason: ev.reason, since: ev.since }));
    } else {
      const c = state.campaigns.get(ev.campaign_id);
      if (!c) return;
      const s = c.stats;
      if (kind === 'campaign.state') {
        c.info.status = ev.status;
        if (s) s.status = ev.status;
      } else if (s && kind === 'call.dialed') {
        s.attempts += 1;
        s.in_flight += 1;
      } else if (s && kind === 'call.ended' && ev.outcome) {
        s.outcomes[ev.outcome] = (s.outcomes[ev.outcome] || 0) + 1;
      } else if (s && kind === 'call.connected') {
        s.connected += 1;
      } else if (s && kind === 'call.abandoned') {
        s.abandoned += 1;
      } else {
        return;
      }
    }
    queueRender();
  }

  function queueRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => { state.renderQueued = false; render(); });
  }

  // ------------------------------------------------------------------ actions

  async function act(button, method, path, body) {
    button.disabled = true;
    try {
      await api(method, path, body);
      setError('');
    } catch (e) {
      if (!(e instanceof AuthError)) setError(String(e.message || e));
    } finally {
      button.disabled = false;
      setTimeout(refresh, 300); // the core applies the request on its loop: show the outcome soon
    }
  }

  function toggleCampaign(id, button) {
    const c = state.campaigns.get(id);
    const running = c && (c.stats ? c.stats.status : c.info.status) === 'running';
    act(button, 'POST', `api/v1/campaigns/${enc(id)}/${running ? 'pause' : 'start'}`);
  }

  function toggleAgent(id, button) {
    const a = state.agents.get(id);
    if (a && a.state === 'paused') act(button, 'POST', `api/v1/agents/${enc(id)}/ready`);
    else act(button, 'POST', `api/v1/agents/${enc(id)}/pause`, { reason: 'supervisor' });
  }

  // ------------------------------------------------------------------ rendering

  function kpi(label, id) {
    const value = el('div', { class: 'value', id, text: '–' });
    const sub = el('div', { class: 'subvalue' });
    return { box: el('div', { class: 'kpi' }, el('div', { class: 'label', text: label }), value, sub), value, sub };
  }

  function kvBlock(title, id) {
    const body = el('tbody', { id });
    return { box: el('div', { class: 'block' }, el('h4', { text: title }), el('table', { class: 'kv' }, body)), body };
  }

  function makeCard(id) {
    const title = el('h3');
    const status = el('span', { class: 'badge', id: `status-${id}` });
    const toggle = el('button', { type: 'button', id: `toggle-${id}`, class: 'toggle' });
    toggle.addEventListener('click', () => toggleCampaign(id, toggle));
    const k = {
      abandon: kpi('abandon rate', `abandon-${id}`),
      occupancy: kpi('occupancy', `occupancy-${id}`),
      dial: kpi('lines per agent', `dial-${id}`),
      attempts: kpi('attempts', `attempts-${id}`),
      live: kpi('live answers', `live-${id}`),
      connected: kpi('connected', `connected-${id}`),
      abandoned: kpi('abandoned', `abandoned-${id}`),
      agents: kpi('agents logged in', `agents-${id}`),
    };
    const calls = kvBlock('calls by state', `calls-${id}`);
    const outcomes = kvBlock('attempts by outcome', `outcomes-${id}`);
    const refused = kvBlock('refusals by reason', `refused-${id}`);
    const agentStates = kvBlock('agents by state', `agentstates-${id}`);
    const didBody = el('tbody');
    const dids = el('div', { class: 'block dids', id: `dids-${id}` }, el('h4', { text: 'caller IDs' }),
      el('table', {}, el('thead', {}, el('tr', {}, ...['DID', 'area', 'attempts', 'answer rate', 'short calls',
        'hour', 'day', 'rest'].map((t) => el('th', { text: t })))), didBody));
    const card = el('article', { class: 'campaign', id: `campaign-${id}` },
      el('header', {}, title, status, toggle),
      el('div', { class: 'kpis' }, ...Object.values(k).map((x) => x.box)),
      el('div', { class: 'blocks' }, calls.box, outcomes.box, refused.box, agentStates.box, dids));
    return { card, title, status, toggle, k, calls: calls.body, outcomes: outcomes.body, refused: refused.body,
      agentStates: agentStates.body, dids, didBody };
  }

  function fillKv(body, entries, empty) {
    body.replaceChildren(...(entries.length ? entries : [[empty, '']]).map(([k, v]) =>
      el('tr', {}, el('th', { text: k }), el('td', { text: String(v) }))));
  }

  function renderCampaign(id, c, refs) {
    const s = c.stats;
    const status = s ? s.status : c.info.status;
    refs.title.replaceChildren(c.info.name || id, ' ', el('small', { text: id }));
    refs.status.textContent = status;
    refs.status.className = 'badge st-' + status;
    refs.toggle.textContent = status === 'running' ? 'pause' : 'resume';
    refs.toggle.dataset.action = status === 'running' ? 'pause' : 'start';
    if (!s) {
      for (const x of Object.values(refs.k)) x.value.textContent = '–';
      return;
    }
    const rate = s.abandon_rate, target = s.abandon_target;
    refs.k.abandon.value.textContent = pct(rate);
    refs.k.abandon.value.classList.toggle('over', rate > target);
    refs.k.abandon.sub.textContent = 'target ' + pct(target);
    refs.k.occupancy.value.textContent = pct(s.occupancy);
    refs.k.occupancy.sub.textContent = s.idle_per_connect_s ? `idle/connect ${s.idle_per_connect_s.toFixed(1)} s` : '';
    const counts = s.agents || {};
    const logged = LOGGED_IN.reduce((n, k) => n + (counts[k] || 0), 0);
    const lines = s.in_flight + s.waiting;
    refs.k.dial.value.textContent = logged ? (lines / logged).toFixed(2) : '–';
    refs.k.dial.sub.textContent = `${lines} lines / ${logged} agents`;
    refs.k.attempts.value.textContent = String(s.attempts);
    refs.k.live.value.textContent = String(s.live_answers);
    refs.k.connected.value.textContent = String(s.connected);
    refs.k.abandoned.value.textContent = String(s.abandoned);
    refs.k.agents.value.textContent = String(logged);
    refs.k.agents.sub.textContent = `${counts.ready || 0} ready`;
    fillKv(refs.calls, [['ringing', s.in_flight], ['waiting for an agent', s.waiting],
      ['talking', counts.on_call || 0]], '');
    const sorted = (o) => Object.entries(o || {}).sort((a, b) => b[1] - a[1]);
    fillKv(refs.outcomes, sorted(s.outcomes), 'none yet');
    fillKv(refs.refused, sorted(s.refused), 'none');
    fillKv(refs.agentStates, sorted(counts).filter(([, n]) => n > 0), 'none');
    const dids = c.dids || [];
    refs.dids.hidden = dids.length === 0;
    refs.didBody.replaceChildren(...dids.map((d) => {
      const resting = d.resting_until && d.resting_until > nowS();
      const tr = el('tr', { class: resting ? 'resting' : '' },
        el('td', { text: d.did }), el('td', { text: d.area || '' }), el('td', { text: String(d.attempts) }),
        el('td', { text: pct(d.answer_rate) }), el('td', { text: pct(d.short_call_ratio) }),
        el('td', { text: String(d.hour_count) }), el('td', { text: String(d.day_count) }),
        el('td', { text: resting ? 'until ' + new Date((d.resting_until - state.skew) * 1000).toLocaleTimeString()
          : (d.rests ? `${d.rests} rests` : '') }));
      return tr;
    }));
  }

  // Rows are kept and updated in place, so a button is never replaced under the supervisor's pointer.
  function agentRow(id) {
    const button = el('button', { type: 'button', id: `agent-toggle-${id}` });
    button.addEventListener('click', () => toggleAgent(id, button));
    const cells = { state: el('span', { class: 'badge' }), reason: el('td'), since: el('td', { class: 'since' }),
      call: el('td', { class: 'muted' }) };
    const row = el('tr', { id: `agent-${id}` }, el('td', { text: id }), el('td', {}, cells.state), cells.reason,
      cells.since, cells.call, el('td', {}, button));
    return { row, button, cells };
  }

  function renderAgents() {
    const body = $('agents').tBodies[0];
    for (const [id, refs] of state.agentRows) {
      if (!state.agents.has(id)) { refs.row.remove(); state.agentRows.delete(id); }
    }
    body.querySelector('tr.empty')?.remove();
    [...state.agents.keys()].sort().forEach((id, i) => {
      const a = state.agents.get(id);
      let refs = state.agentRows.get(id);
      if (!refs) {
        refs = agentRow(id);
        state.agentRows.set(id, refs);
      }
      if (body.children[i] !== refs.row) body.insertBefore(refs.row, body.children[i] || null); // stays sorted
      refs.cells.state.textContent = a.state;
      refs.cells.state.className = 'badge st-' + a.state;
      refs.cells.reason.textContent = a.reason || '';
      refs.cells.since.dataset.since = String(a.since);
      refs.cells.since.textContent = duration(nowS() - a.since);
      refs.cells.call.textContent = a.call_id || '';
      refs.button.textContent = a.state === 'paused' ? 'ready' : 'pause';
      refs.button.disabled = a.state === 'logged_out' || a.state === 'connecting';
    });
    if (!state.agents.size) {
      body.append(el('tr', { class: 'empty' }, el('td', { colspan: '6', class: 'muted', text: 'no agents' })));
    }
  }

  function render() {
    const box = $('campaigns');
    for (const [id, refs] of state.cards) {
      if (!state.campaigns.has(id)) { refs.card.remove(); state.cards.delete(id); }
    }
    if (!state.campaigns.size) box.replaceChildren(el('p', { class: 'muted', text: 'no campaigns' }));
    else box.querySelector(':scope > p')?.remove();
    for (const id of [...state.campaigns.keys()].sort()) {
      let refs = state.cards.get(id);
      if (!refs) {
        refs = makeCard(id);
        state.cards.set(id, refs);
        box.append(refs.card);
      }
      renderCampaign(id, state.campaigns.get(id), refs);
    }
    renderAgents();
  }

  function tick() { // time in state ticks in the browser between updates
    for (const td of document.querySelectorAll('#agents td.since')) {
      td.textContent = duration(nowS() - Number(td.dataset.since));
    }
  }

  // ------------------------------------------------------------------ start

  document.addEventListener('DOMContentLoaded', () => {
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      useToken($('token-input').value.trim());
      $('token-input').value = '';
      refresh();
    });
    $('forget-token').addEventListener('click', () => { useToken(''); askToken(''); });
    $('forget-token').hidden = !state.token;
    refresh();
    setInterval(refresh, REFRESH_MS);
    setInterval(tick, 1000);
  });
})();
