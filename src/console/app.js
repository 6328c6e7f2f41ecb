/*
 * ztna-keystore web console: the browser side, served at /console and compiled into the binary.
 * Vanilla ES2020, no dependencies, no build step, under a strict Content-Security-Policy.
 *
 * It must NOT:
 *  - put the API key (or any secret) in a URL, or keep it anywhere but sessionStorage
 *    ("ztna.apiKey"), which is cleared on sign-out;
 *  - build DOM from API data with innerHTML: everything goes through createElement/textContent;
 *  - fetch anything from another origin, use eval/new Function, inline handlers or style attributes.
 * A new key's secret is shown once, in a dialog that only "Done" closes, and is then removed.
 */
'use strict';

// ---------------------------------------------------------------------------------------------
// DOM and formatting helpers
// ---------------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const DASH = '—';
const TAG_RE = /^tag:[a-z0-9-]{1,63}$/;
const TAG_RULE = 'a tag is "tag:" followed by 1 to 63 lowercase letters, digits or dashes (e.g. tag:server)';

/** Makes an element. props: class, text, dataset, onClick, aria-*, or any DOM property. */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = String(value);
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name === 'onClick') node.addEventListener('click', value);
    else if (name.startsWith('aria-')) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
  return node;
}

/** Shows a message in an error element (role="alert" while shown), or hides it when empty. */
function showError(el, message) {
  el.textContent = message || '';
  el.hidden = !message;
  if (message) el.setAttribute('role', 'alert');
  else el.removeAttribute('role');
}

function clearErrors(...ids) {
  for (const id of ids) showError($(id), '');
}

let toastTimer = null;
function toast(message, { error = false } = {}) {
  const el = $('toast');
  el.textContent = message;
  el.classList.toggle('error', error);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, error ? 8000 : 4000);
}

const RELATIVE = new Intl.RelativeTimeFormat('en', { numeric: 'always' });
const UNITS = [['year', 31536000], ['month', 2592000], ['week', 604800], ['day', 86400],
  ['hour', 3600], ['minute', 60]];

/** "in 3 days", "2 hours ago": the unit is chosen once the time is 90% of it away. */
function relativeTime(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const secs = (t - Date.now()) / 1000;
  for (const [unit, size] of UNITS) {
    if (Math.abs(secs) >= size * 0.9) return RELATIVE.format(Math.round(secs / size), unit);
  }
  if (Math.abs(secs) < 45) return secs >= 0 ? 'in a few seconds' : 'just now';
  return RELATIVE.format(Math.round(secs), 'second');
}

/** The exact time in the viewer's locale and time zone. */
function exactTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'long' });
}

/** A table cell with a relative time, the exact local time in its title. */
function timeCell(iso, none = DASH) {
  if (!iso) return h('td', { text: none });
  return h('td', { class: 'nowrap', title: exactTime(iso) },
    h('time', { dateTime: iso, text: relativeTime(iso) }));
}

function stateBadge(state, prefix = 'state') {
  return h('span', { class: `badge ${prefix}-${state}`, text: state });
}

function tagList(tags) {
  if (!tags || tags.length === 0) return DASH;
  return h('span', { class: 'tags' }, tags.map((t) => h('span', { class: 'badge tag', text: t })));
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/** Splits "tag:a, tag:b tag:c" into unique tags. */
function parseTags(text) {
  return [...new Set(text.split(/[\s,]+/).filter(Boolean))];
}

/** The first tag that breaks the rule, as a message; null when all are fine. */
function badTagMessage(tags) {
  const bad = tags.find((t) => !TAG_RE.test(t));
  return bad === undefined ? null : `"${bad}" is not a valid tag: ${TAG_RULE}.`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// API client: JSON, Bearer auth, automatic retry through a leader failover
// ---------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, field = null, outcomeUnknown = false) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.outcomeUnknown = outcomeUnknown; // a write may or may not have been applied
    this.signedOut = false; // the session ended because of (or during) this call
  }
}

const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 2000;
const RETRY_FOR_MS = 20000;
const ATTEMPT_TIMEOUT_MS = 10000;
let retryingCalls = 0; // the banner shows while any call is retrying

function setRetrying(delta) {
  retryingCalls += delta;
  $('banner').hidden = retryingCalls === 0;
}

/** One HTTP attempt. Returns {data} or {error, retry}. */
async function attempt(method, path, body, key) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ATTEMPT_TIMEOUT_MS);
  const headers = { Accept: 'application/json' };
  if (body !== null) headers['Content-Type'] = 'application/json';
  if (key) headers.Authorization = `Bearer ${key}`;
  try {
    let res;
    let data = null;
    try {
      res = await fetch(path, {
        method, headers, body: body === null ? undefined : JSON.stringify(body),
        cache: 'no-store', credentials: 'omit', signal: controller.signal,
      });
      try { data = await res.json(); } catch (_) { data = null; }
    } catch (e) {
      const why = e.name === 'AbortError' ? 'the request timed out' : 'the network request failed';
      return { retry: true, error: new ApiError(0, 'network', `Could not reach the cluster: ${why}.`, null, true) };
    }
    if (res.ok && data !== null) return { data };
    const err = (data && data.error) || {};
    const message = err.message || `The server answered HTTP ${res.status} without an explanation.`;
    const unavailable = res.status === 503 && (err.code === 'unavailable' || data === null);
    return {
      retry: unavailable,
      error: new ApiError(res.status, err.code || `http_${res.status}`, message, err.field || null, unavailable),
    };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A call with retries: a network error or a 503 "unavailable" is retried with backoff
 * (250 ms doubling to 2 s, for up to 20 s) with the very same body, so the same request_id.
 * A 401 signs the user out unless signOutOn401 is false (sign-in itself).
 */
async function request(method, path, body = null, { auth = true, key = session.apiKey, signOutOn401 = true } = {}) {
  if (auth && !key) throw Object.assign(new ApiError(0, 'signed_out', 'Signed out.'), { signedOut: true });
  const sessionCall = auth && key === session.apiKey; // not sign-in's own check of a new key
  const deadline = Date.now() + RETRY_FOR_MS;
  let delay = RETRY_FIRST_MS;
  let bannerShown = false;
  try {
    for (;;) {
      const result = await attempt(method, path, body, auth ? key : null);
      // The session ended meanwhile: nothing of the answer is shown (a new key's secret least).
      const ended = sessionCall && session.apiKey !== key;
      if (!result.error && !ended) return result.data;
      const err = result.error || new ApiError(0, 'signed_out', 'Signed out.');
      if (ended) err.signedOut = true;
      if (!result.retry || err.signedOut || Date.now() + delay > deadline) {
        if (err.status === 401 && sessionCall && signOutOn401 && !err.signedOut) {
          signOut('Your API key was rejected (revoked or expired). Sign in again.');
          err.signedOut = true;
        }
        throw err;
      }
      if (!bannerShown) { bannerShown = true; setRetrying(1); }
      await sleep(delay);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
    }
  } finally {
    if (bannerShown) setRetrying(-1);
  }
}

const api = {
  whoami: (key) => request('GET', '/api/whoami', null, { key, signOutOn401: false }),
  keys: (action, fields = {}) => request('POST', '/api/key-management', { action, org_id: session.orgId(), ...fields }),
  machines: (action, fields = {}) => request('POST', '/api/machine-admin', { action, org_id: session.orgId(), ...fields }),
  orgs: (action, fields = {}) => request('POST', '/api/org-admin', { action, ...fields }),
  cluster: () => request('GET', '/api/cluster/nodes', null),
};

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** "console-" + 22 uniformly random base62 characters. */
function newRequestId() {
  let id = '';
  while (id.length < 22) {
    for (const b of crypto.getRandomValues(new Uint8Array(32))) {
      if (b < 248 && id.length < 22) id += BASE62[b % 62]; // 248 = 4 * 62: no modulo bias
    }
  }
  return `console-${id}`;
}

/**
 * The request_id of one user action. Retries inside request() reuse it; it is also kept when
 * the outcome stayed unknown (so trying again cannot apply the action twice) and renewed after
 * any definite answer.
 */
class UserAction {
  constructor() { this.id = null; }
  requestId() {
    if (!this.id) this.id = newRequestId();
    return this.id;
  }
  settle(error) {
    if (!error || !error.outcomeUnknown) this.id = null;
  }
  reset() { this.id = null; }
}

// ---------------------------------------------------------------------------------------------
// Session: the API key lives in sessionStorage only
// ---------------------------------------------------------------------------------------------

const STORAGE_KEY = 'ztna.apiKey';
const session = {
  apiKey: null,
  who: null,
  orgId() { return this.who ? this.who.org_id : null; },
  isOperator() { return !!this.who && this.who.scope === 'operator'; },
};

async function signInSubmit(event) {
  event.preventDefault();
  const input = $('signin-key');
  const key = input.value.trim();
  const error = $('signin-error');
  if (!key) return showError(error, 'Enter an API key.');
  if (key.startsWith('tskey-auth-')) {
    return showError(error, 'That is an auth key (tskey-auth-…), which enrols machines. Sign in with an API key (tskey-api-…).');
  }
  showError(error, '');
  const button = $('signin-submit');
  button.disabled = true;
  button.textContent = 'Signing in…';
  try {
    const who = await api.whoami(key);
    startSession(key, who, false);
  } catch (e) {
    showError(error, e.status === 401 ? 'This API key is not valid: it may be mistyped, revoked or expired.' : e.message);
    input.focus();
  } finally {
    button.disabled = false;
    button.textContent = 'Sign in';
  }
}

function startSession(key, who, keepRoute) {
  session.apiKey = key;
  session.who = who;
  sessionStorage.setItem(STORAGE_KEY, key);
  $('signin-key').value = '';
  showError($('signin-error'), '');
  $('signin-view').hidden = true;
  $('app').hidden = false;

  const owner = who.scope === 'operator' ? 'operator' : (who.org_id || 'org');
  $('whoami').textContent = `${owner} · api key ${who.api_key_id}`;
  $('whoami').title = who.description || '';
  const orgsLink = document.querySelector('#nav a[href="#/orgs"]');
  if (session.isOperator() && !orgsLink) $('nav').append(h('a', { href: '#/orgs', text: 'Orgs' }));
  if (!session.isOperator() && orgsLink) orgsLink.remove();

  if (!keepRoute || !parseRoute()) history.replaceState(null, '', defaultRoute());
  route();
}

/** Ends the session; message (if any) is shown on the sign-in form. */
function signOut(message = '') {
  session.apiKey = null;
  session.who = null;
  sessionStorage.removeItem(STORAGE_KEY);
  leaveRoute();
  for (const dialog of document.querySelectorAll('dialog')) {
    lockedDialogs.delete(dialog);
    if (dialog.open) dialog.close();
  }
  clearSecrets();
  for (const tbody of document.querySelectorAll('#app tbody')) tbody.replaceChildren();
  $('kd-fields').replaceChildren();
  $('key-filters').reset();
  showError($('key-filter-tag-error'), '');
  keysPage.appliedTag = '';
  $('whoami').textContent = '';
  $('app').hidden = true;
  $('signin-view').hidden = false;
  document.title = 'Sign in · ztna-keystore console';
  history.replaceState(null, '', location.pathname + location.search);
  showError($('signin-error'), message);
  $('signin-key').focus();
}

/** On page load: a key left in this tab's sessionStorage is checked again. */
async function restoreSession() {
  const key = sessionStorage.getItem(STORAGE_KEY);
  if (!key) return $('signin-key').focus();
  $('signin-view').hidden = true;
  try {
    startSession(key, await api.whoami(key), true);
  } catch (e) {
    signOut(e.status === 401 ? 'Your API key was rejected (revoked or expired). Sign in again.' : e.message);
  }
}

// ---------------------------------------------------------------------------------------------
// Router: #/keys, #/keys/<key_id>, #/machines, #/cluster, #/orgs
// ---------------------------------------------------------------------------------------------

const ROUTES = {
  keys: { section: 'keys', title: 'Settings → API Keys → Auth Keys', nav: '#/keys', org: true, show: () => reloadKeys() },
  key: { section: 'key-detail', title: 'Settings → API Keys → Auth Keys', nav: '#/keys', org: true, show: (r) => showKeyDetail(r.keyId) },
  machines: { section: 'machines', title: 'Settings → Machines', nav: '#/machines', org: true, show: () => loadMachines() },
  cluster: { section: 'cluster', title: 'Settings → Cluster', nav: '#/cluster', show: () => startClusterPolling() },
  orgs: { section: 'orgs', title: 'Settings → Orgs', nav: '#/orgs', operator: true, show: () => loadOrgs() },
};

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  if (parts[0] === 'keys' && parts[1]) {
    try {
      return { name: 'key', keyId: decodeURIComponent(parts[1]) };
    } catch (_) {
      return null; // a malformed escape, e.g. "#/keys/%"
    }
  }
  if (parts[0] !== 'key' && Object.hasOwn(ROUTES, parts[0]) && !parts[1]) return { name: parts[0] };
  return null;
}

function defaultRoute() {
  return session.isOperator() ? '#/orgs' : '#/keys';
}

function leaveRoute() {
  stopClusterPolling();
  clearTimeout(keysPage.searchTimer);
}

function route(moveFocus = false) {
  if (!session.who) return;
  const r = parseRoute();
  const spec = r && ROUTES[r.name];
  if (!spec || (spec.operator && !session.isOperator())) {
    history.replaceState(null, '', defaultRoute());
    return route(moveFocus);
  }
  leaveRoute();
  for (const section of document.querySelectorAll('section.page')) section.hidden = true;
  const title = r.name === 'key' ? `${spec.title} → ${r.keyId}` : spec.title;
  document.title = `${title} · ztna-keystore console`;
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.getAttribute('href') === spec.nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  let section = $(spec.section);
  if (spec.org && session.isOperator()) section = $('not-for-operator'); // no org to act in
  const heading = section.querySelector('h1');
  heading.textContent = title; // each page's heading shows the guide's path
  section.hidden = false;
  if (section.id === spec.section) spec.show(r);
  if (moveFocus) heading.focus(); // for keyboard and screen-reader users
}

// ---------------------------------------------------------------------------------------------
// Auth keys page
// ---------------------------------------------------------------------------------------------

const PAGE_SIZE = 100;
const MAX_REQUESTS_PER_LOAD = 5; // pages may come back short; bound one click's requests
const keysPage = { generation: 0, cursor: null, shown: 0, filters: {}, appliedTag: '', loading: false, searchTimer: null };

function currentKeyFilters() {
  const filters = {};
  const search = $('key-search').value.trim();
  if (search) filters.search = search;
  if ($('key-filter-state').value) filters.state = $('key-filter-state').value;
  if ($('key-filter-type').value) filters.type = $('key-filter-type').value;
  if (keysPage.appliedTag) filters.tag = keysPage.appliedTag;
  return filters;
}

/** Reloads from the first page with the filters as they are now. */
function reloadKeys() {
  clearTimeout(keysPage.searchTimer);
  keysPage.generation += 1;
  keysPage.filters = currentKeyFilters();
  keysPage.cursor = null;
  keysPage.shown = 0;
  $('keys-table').tBodies[0].replaceChildren();
  return loadKeyPages();
}

/** Loads up to PAGE_SIZE more keys, following next_cursor through short pages. */
async function loadKeyPages() {
  const gen = keysPage.generation;
  keysPage.loading = true;
  $('keys-more').disabled = true;
  $('keys-empty').hidden = true;
  $('keys-count').textContent = 'Loading…';
  showError($('keys-error'), '');
  const tbody = $('keys-table').tBodies[0];
  let added = 0;
  let requests = 0;
  try {
    do {
      const body = { ...keysPage.filters, limit: PAGE_SIZE - added };
      if (keysPage.cursor) body.cursor = keysPage.cursor;
      const page = await api.keys('list_auth_keys', body);
      if (gen !== keysPage.generation) return; // the filters changed meanwhile
      tbody.append(...page.keys.map(keyRow));
      added += page.keys.length;
      keysPage.shown += page.keys.length;
      keysPage.cursor = page.next_cursor || null;
      requests += 1;
    } while (keysPage.cursor && added < PAGE_SIZE && requests < MAX_REQUESTS_PER_LOAD);
  } catch (e) {
    if (gen === keysPage.generation && !e.signedOut) showError($('keys-error'), e.message);
  } finally {
    if (gen === keysPage.generation) {
      keysPage.loading = false;
      renderKeysFooter();
    }
  }
}

function renderKeysFooter() {
  const { shown, cursor } = keysPage;
  const more = $('keys-more');
  more.hidden = !cursor;
  more.disabled = false;
  $('keys-count').textContent = shown === 0 && cursor
    ? 'No matching keys in the part of the list searched so far.'
    : `Showing ${plural(shown, 'key', 'keys')}`;
  const filtered = Object.keys(keysPage.filters).length > 0;
  const empty = $('keys-empty');
  empty.textContent = filtered ? 'No auth keys match these filters.' : 'No auth keys yet. Create one to enrol a machine.';
  empty.hidden = shown > 0 || !!cursor || !!$('keys-error').textContent;
}

function keyHref(keyId) {
  return `#/keys/${encodeURIComponent(keyId)}`;
}

function keyRow(k) {
  const type = k.reusable ? 'Reusable' : 'One-shot';
  const hasMax = k.max_uses != null;
  return h('tr', { dataset: { keyId: k.key_id } },
    h('td', { class: 'nowrap' }, h('a', { href: keyHref(k.key_id), class: 'mono', text: k.prefix })),
    h('td', { text: k.description || DASH }),
    h('td', { class: 'nowrap', text: hasMax ? `${type} · max ${k.max_uses}` : type }),
    h('td', { class: 'nowrap', text: hasMax ? `${k.uses} / ${k.max_uses}` : String(k.uses) }),
    h('td', {}, k.ephemeral ? h('span', { class: 'badge ephemeral', text: 'Ephemeral' }) : DASH),
    h('td', {}, tagList(k.tags)),
    timeCell(k.created_at),
    timeCell(k.expires_at),
    h('td', {}, stateBadge(k.state)),
    h('td', { class: 'actions' }, k.state === 'revoked' ? null : h('button', {
      type: 'button', class: 'revoke small link-danger', text: 'Revoke',
      'aria-label': `Revoke ${k.prefix}`, onClick: () => confirmRevokeKey(k, () => reloadKeys()),
    })));
}

function confirmRevokeKey(k, after) {
  const named = k.description ? `${k.prefix} ("${k.description}")` : k.prefix;
  confirmAction({
    title: 'Revoke auth key',
    text: `Revoke ${named}? Machines can no longer enrol with it; machines already enrolled stay.`,
    okLabel: 'Revoke',
    run: (requestId) => api.keys('revoke_auth_key', { key_id: k.key_id, request_id: requestId }),
    done: () => { toast(`Revoked ${k.prefix}.`); after(); },
  });
}

/** The tag filter is applied on change or Enter, and only when it is a valid tag. */
function applyTagFilter() {
  const value = $('key-filter-tag').value.trim();
  if (value && !TAG_RE.test(value)) {
    showError($('key-filter-tag-error'), `"${value}" is not a tag filter: ${TAG_RULE}.`);
    return;
  }
  showError($('key-filter-tag-error'), '');
  if (value !== keysPage.appliedTag) {
    keysPage.appliedTag = value;
    reloadKeys();
  }
}

function setupKeysPage() {
  $('key-filters').addEventListener('submit', (e) => { e.preventDefault(); applyTagFilter(); reloadKeys(); });
  $('key-search').addEventListener('input', () => {
    clearTimeout(keysPage.searchTimer);
    keysPage.searchTimer = setTimeout(reloadKeys, 300);
  });
  // Cleared with the field's "x" or left: apply at once if the text differs from what is shown.
  for (const type of ['search', 'change']) {
    $('key-search').addEventListener(type, () => {
      if ($('key-search').value.trim() !== (keysPage.filters.search || '')) reloadKeys();
    });
  }
  $('key-filter-state').addEventListener('change', reloadKeys);
  $('key-filter-type').addEventListener('change', reloadKeys);
  $('key-filter-tag').addEventListener('change', applyTagFilter);
  $('key-filter-tag').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); applyTagFilter(); }
  });
  $('keys-more').addEventListener('click', () => { if (!keysPage.loading) loadKeyPages(); });
  $('create-key-open').addEventListener('click', openCreateKey);
}

// ---------------------------------------------------------------------------------------------
// Create-key dialog and the one-time secret dialogs
// ---------------------------------------------------------------------------------------------

const createKeyAction = new UserAction();
const CK_ERRORS = ['ck-description-error', 'ck-tags-error', 'ck-max-uses-error', 'ck-expires_in-error', 'ck-error'];
// Server field name -> [error element, input to focus].
const CK_FIELDS = {
  description: ['ck-description-error', 'ck-description'],
  tags: ['ck-tags-error', 'ck-tags'],
  max_uses: ['ck-max-uses-error', 'ck-max-uses'],
  expires_in: ['ck-expires_in-error', 'ck-expiry'],
};

/** Puts an API error beside its field when the dialog has one, else in the general slot. */
function showFieldError(error, fields, generalId) {
  const [errorId, inputId] = (error.field && fields[error.field]) || [generalId, null];
  showError($(errorId), error.message);
  if (inputId) $(inputId).focus();
}

function syncMaxUses() {
  const reusable = $('ck-reusable').checked;
  $('ck-max-uses').disabled = !reusable;
  if (!reusable) $('ck-max-uses').value = '';
}

function openCreateKey() {
  $('create-key-form').reset();
  syncMaxUses();
  clearErrors(...CK_ERRORS);
  createKeyAction.reset();
  $('ck-submit').disabled = false;
  $('create-key').showModal();
  $('ck-description').focus();
}

async function submitCreateKey(event) {
  event.preventDefault();
  clearErrors(...CK_ERRORS);
  const tags = parseTags($('ck-tags').value);
  const tagProblem = badTagMessage(tags);
  if (tagProblem) {
    showError($('ck-tags-error'), tagProblem);
    return $('ck-tags').focus();
  }
  const reusable = $('ck-reusable').checked;
  const maxInput = $('ck-max-uses');
  let maxUses = null;
  if (reusable && (maxInput.value.trim() !== '' || maxInput.validity.badInput)) {
    maxUses = Number(maxInput.value);
    if (!Number.isInteger(maxUses) || maxUses < 1) {
      showError($('ck-max-uses-error'), 'Maximum uses must be a whole number of 1 or more; leave it blank for unlimited.');
      return maxInput.focus();
    }
  }
  const body = {
    reusable,
    ephemeral: $('ck-ephemeral').checked,
    expires_in: Number($('ck-expiry').value),
    tags,
    description: $('ck-description').value,
    preauthorized: $('ck-preauthorized').checked,
    request_id: createKeyAction.requestId(),
  };
  if (maxUses !== null) body.max_uses = maxUses;

  const submit = $('ck-submit');
  submit.disabled = true;
  // The dialog stays until the cluster answers: a key made meanwhile must show its secret here.
  creatingKey = true;
  $('ck-cancel').disabled = true;
  submit.textContent = 'Creating…';
  try {
    const created = await api.keys('create_auth_key', body);
    createKeyAction.settle(null);
    $('create-key').close();
    if (!created.key) {
      toast('The key was created, but the server did not return its secret. Revoke it and create another.', { error: true });
      reloadKeys();
    } else {
      showKeySecret(created.key);
    }
  } catch (e) {
    createKeyAction.settle(e);
    if (e.signedOut) return;
    if (e.code === 'already_created') {
      // The first try was applied during a failover, but its secret was lost with the answer:
      // the server's message names the key to revoke.
      showError($('ck-error'), e.message);
      createKeyAction.reset();
      reloadKeys();
    } else if (e.code === 'request_id_reused') {
      // The form changed after a try whose outcome stayed unknown: a new request from here on.
      showError($('ck-error'), 'The earlier try may have created a key (check the list). Press Create key again to create one with these settings.');
      createKeyAction.reset();
      reloadKeys();
    } else {
      showFieldError(e, CK_FIELDS, 'ck-error');
    }
  } finally {
    creatingKey = false;
    submit.disabled = false;
    $('ck-cancel').disabled = false;
    submit.textContent = 'Create key';
  }
}

let creatingKey = false;

function setupCreateKeyDialog() {
  $('create-key-form').addEventListener('submit', submitCreateKey);
  $('create-key').addEventListener('cancel', (e) => { if (creatingKey) e.preventDefault(); });
  $('ck-reusable').addEventListener('change', syncMaxUses);
  $('ck-cancel').addEventListener('click', () => $('create-key').close());
}

// Secret dialogs close only through "Done": Escape is cancelled, and if the browser closes the
// dialog anyway (repeated Escape without a user activation), it is opened again.
const lockedDialogs = new Set();

function setupSecretDialog(prefix, dialogId, onDone) {
  const dialog = $(dialogId);
  const ack = $(`${prefix}-ack`);
  const done = $(`${prefix}-done`);
  const copy = $(`${prefix}-copy`);
  dialog.addEventListener('cancel', (e) => e.preventDefault());
  dialog.addEventListener('close', () => { if (lockedDialogs.has(dialog)) dialog.showModal(); });
  ack.addEventListener('change', () => { done.disabled = !ack.checked; });
  copy.addEventListener('click', () => copySecret($(`${prefix}-key`), $(`${prefix}-copy-status`), copy));
  done.addEventListener('click', () => {
    if (!ack.checked) return;
    lockedDialogs.delete(dialog);
    clearSecrets();
    dialog.close();
    onDone();
  });
}

function openSecretDialog(prefix, dialogId, key) {
  const dialog = $(dialogId);
  $(`${prefix}-key`).textContent = key;
  $(`${prefix}-copy-status`).textContent = '';
  $(`${prefix}-copy`).textContent = 'Copy';
  $(`${prefix}-ack`).checked = false;
  $(`${prefix}-done`).disabled = true;
  lockedDialogs.add(dialog);
  dialog.showModal();
  $(`${prefix}-copy`).focus();
}

/** The cluster CA (PEM) when the console is served over HTTPS: install commands pin it. */
let clusterCa = null;

async function loadClusterCa() {
  if (location.protocol !== 'https:') return;
  try {
    const r = await fetch('/ca.crt', { cache: 'no-store' });
    const text = r.ok ? (await r.text()).trim() : '';
    if (/^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+\/=\n]+\n-----END CERTIFICATE-----$/.test(text)) clusterCa = text;
  } catch (_) { /* the commands below then name the CA file the admin must supply */ }
}

function showKeySecret(key) {
  const origin = location.origin;
  if (location.protocol === 'https:') {
    // The machine trusts only the cluster CA: written from this page (which reached the node
    // over a verified connection), never skipped with -k.
    const ca = clusterCa
      ? `cat >ztna-ca.crt <<'ZTNA_CA'\n${clusterCa}\nZTNA_CA\n`
      : '# ztna-ca.crt: the cluster CA (tls/ca.crt on a node)\n';
    $('ks-install').textContent = `${ca}curl -fsSL --cacert ztna-ca.crt ${origin}/install.sh | ZTNA_AUTH_KEY=${key} sh`;
    $('ks-up').textContent = `ZTNA_CA_CERT=ztna-ca.crt ZTNA_AUTH_KEY=${key} ztna up --server ${origin}`;
  } else {
    $('ks-install').textContent = `curl -fsSL ${origin}/install.sh | ZTNA_AUTH_KEY=${key} sh`;
    $('ks-up').textContent = `ZTNA_AUTH_KEY=${key} ztna up --server ${origin}`;
  }
  openSecretDialog('ks', 'key-secret', key);
}

/** Removes every shown secret from the DOM. */
function clearSecrets() {
  for (const id of ['ks-key', 'ks-install', 'ks-up', 'aks-key', 'ks-copy-status', 'aks-copy-status']) $(id).textContent = '';
  for (const id of ['ks-ack', 'aks-ack']) $(id).checked = false;
}

async function copySecret(code, status, button) {
  try {
    await navigator.clipboard.writeText(code.textContent);
    status.textContent = 'Copied';
    button.textContent = 'Copied';
    setTimeout(() => { button.textContent = 'Copy'; }, 2000);
  } catch (_) {
    // No clipboard access (e.g. not a secure context): select the key for a manual copy.
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    status.textContent = 'The key is selected: press Ctrl+C (⌘C on a Mac) to copy it.';
  }
}

// ---------------------------------------------------------------------------------------------
// Shared confirmation dialog
// ---------------------------------------------------------------------------------------------

const confirmState = { run: null, done: null, okLabel: 'Confirm', action: new UserAction() };

/** Asks, then runs run(requestId) with the dialog open; errors stay in the dialog. */
function confirmAction({ title, text, okLabel, run, done }) {
  Object.assign(confirmState, { run, done, okLabel });
  confirmState.action.reset();
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  showError($('confirm-error'), '');
  const ok = $('confirm-ok');
  ok.textContent = okLabel;
  ok.disabled = false;
  $('confirm').showModal();
  $('confirm-cancel').focus(); // the safe choice has the focus
}

// While a confirmed action runs, the dialog stays (no Cancel, no Escape): its answer belongs to
// this dialog, not to the next one the user might open.
let confirmBusy = false;

async function confirmOk() {
  const ok = $('confirm-ok');
  const { run, done, okLabel, action } = confirmState;
  confirmBusy = true;
  ok.disabled = true;
  $('confirm-cancel').disabled = true;
  ok.textContent = 'Working…';
  showError($('confirm-error'), '');
  try {
    const result = await run(action.requestId());
    action.settle(null);
    if ($('confirm').open) $('confirm').close();
    if (done) done(result);
  } catch (e) {
    action.settle(e);
    if (!e.signedOut) showError($('confirm-error'), e.message);
  } finally {
    confirmBusy = false;
    ok.disabled = false;
    $('confirm-cancel').disabled = false;
    ok.textContent = okLabel;
  }
}

function setupConfirmDialog() {
  $('confirm').addEventListener('cancel', (e) => { if (confirmBusy) e.preventDefault(); });
  $('confirm-ok').addEventListener('click', confirmOk);
  $('confirm-cancel').addEventListener('click', () => $('confirm').close());
}

// ---------------------------------------------------------------------------------------------
// Key detail page
// ---------------------------------------------------------------------------------------------

const detail = { generation: 0, key: null, machines: null, cursor: null };

async function showKeyDetail(keyId) {
  const gen = ++detail.generation;
  detail.key = null;
  $('kd-body').hidden = true;
  showError($('kd-error'), '');
  let key;
  let machines = null;
  try {
    const [got, listed] = await Promise.all([
      api.keys('get_auth_key', { key_id: keyId }),
      api.machines('list_machines').catch((e) => e), // hostnames are a nicety; the key is not
    ]);
    key = got;
    if (!(listed instanceof Error)) machines = new Map(listed.machines.map((m) => [m.machine_id, m]));
  } catch (e) {
    if (gen === detail.generation && !e.signedOut) showError($('kd-error'), e.message);
    return;
  }
  if (gen !== detail.generation) return;
  detail.key = key;
  detail.machines = machines;
  renderKeyFields(key);
  $('kd-revoke').hidden = key.state === 'revoked';
  const rows = (key.enrolments || []).map((e) => enrolmentRow(e, machines));
  $('enrolments').tBodies[0].replaceChildren(...rows);
  $('enrolments-empty').hidden = rows.length > 0;
  showMoreEnrolments(key.next_enrolments_cursor);
  $('kd-body').hidden = false;
}

// A key's history comes a page at a time: the next page is appended on request.
function showMoreEnrolments(cursor) {
  detail.cursor = cursor || null;
  $('enrolments-more').hidden = !detail.cursor;
}

async function loadMoreEnrolments() {
  const key = detail.key;
  if (!key || !detail.cursor) return;
  const gen = detail.generation;
  $('enrolments-more').disabled = true;
  try {
    const page = await api.keys('get_auth_key', { key_id: key.key_id, enrolments_cursor: detail.cursor });
    if (gen !== detail.generation) return;
    $('enrolments').tBodies[0].append(...(page.enrolments || []).map((e) => enrolmentRow(e, detail.machines)));
    showMoreEnrolments(page.next_enrolments_cursor);
  } catch (e) {
    if (gen === detail.generation && !e.signedOut) showError($('kd-error'), e.message);
  } finally {
    $('enrolments-more').disabled = false;
  }
}

function renderKeyFields(k) {
  const yesNo = (b) => (b ? 'Yes' : 'No');
  const when = (iso) => (iso ? h('time', { dateTime: iso, title: exactTime(iso), text: `${exactTime(iso)} (${relativeTime(iso)})` }) : DASH);
  const rows = [
    ['Key id', h('span', { class: 'mono', text: k.key_id })],
    ['Prefix', h('span', { class: 'mono', text: k.prefix })],
    ['Org', h('span', { class: 'mono', text: k.org_id })],
    ['State', stateBadge(k.state)],
    ['Description', k.description || DASH],
    ['Reusable', yesNo(k.reusable)],
    ['Uses', String(k.uses)],
    ['Max uses', k.max_uses != null ? String(k.max_uses) : (k.reusable ? 'Unlimited' : '1')],
    ['Ephemeral', yesNo(k.ephemeral)],
    ['Pre-approved', k.preauthorized ? 'Yes' : 'No: machines wait for an admin to approve them'],
    ['Tags', tagList(k.tags)],
    ['Created', when(k.created_at)],
    ['Expires', when(k.expires_at)],
    ['Last used', k.last_used_at ? when(k.last_used_at) : 'Never'],
    ['Revoked', when(k.revoked_at)],
  ];
  $('kd-fields').replaceChildren(...rows.flatMap(([label, value]) => [h('dt', { text: label }), h('dd', {}, value)]));
}

function enrolmentRow(e, machines) {
  let hostname = '(unknown: machines could not be listed)';
  if (machines) hostname = machines.has(e.machine_id) ? machines.get(e.machine_id).hostname : '(deleted)';
  const deregistered = e.deregistered_at
    ? h('td', { title: exactTime(e.deregistered_at) },
      h('time', { dateTime: e.deregistered_at, text: relativeTime(e.deregistered_at) }),
      e.deregistered_reason ? ` — ${e.deregistered_reason}` : '')
    : h('td', { text: DASH });
  return h('tr', { dataset: { machineId: e.machine_id } },
    h('td', { text: hostname }),
    h('td', { class: 'mono', text: e.machine_id }),
    h('td', { class: 'mono', text: e.node_key_fingerprint }),
    timeCell(e.at),
    h('td', { class: 'log-index', text: String(e.log_index) }),
    h('td', { text: e.kind }),
    deregistered);
}

function setupKeyDetail() {
  $('kd-revoke').addEventListener('click', () => {
    const k = detail.key;
    if (k) confirmRevokeKey(k, () => showKeyDetail(k.key_id));
  });
  $('enrolments-more').addEventListener('click', loadMoreEnrolments);
}

// ---------------------------------------------------------------------------------------------
// Machines page
// ---------------------------------------------------------------------------------------------

const machinesPage = { generation: 0 };
const setTagsState = { machine: null, action: new UserAction() };

const MACHINE_ACTIONS = {
  quarantine: { label: 'Quarantine', when: (m) => m.state === 'active', text: (n) => `Quarantine ${n}? It stays enrolled but is cut off from the network until you unquarantine it.` },
  unquarantine: { label: 'Unquarantine', when: (m) => m.state === 'quarantined', text: (n) => `Unquarantine ${n}? It can connect to the network again.` },
  approve: { label: 'Approve', when: (m) => m.state === 'pending', text: (n) => `Approve ${n}? It joins the network.` },
  reject: { label: 'Reject', when: (m) => m.state === 'pending', text: (n) => `Reject ${n}? It will not join the network, and its node key cannot enrol again unless an admin allows it.` },
  revoke_node_key: { label: 'Revoke node key', when: (m) => m.state !== 'node_key_revoked', text: (n) => `Revoke the node key of ${n}? The machine can no longer authenticate with it.` },
  set_tags: { label: 'Set tags', when: () => true },
  delete: { label: 'Delete', when: () => true, text: (n) => `Delete ${n}? It is removed from the network and its node key stops working.` },
};

async function loadMachines() {
  const gen = ++machinesPage.generation;
  showError($('machines-error'), '');
  const state = $('machine-filter-state').value;
  try {
    const data = await api.machines('list_machines', state ? { state } : {});
    if (gen !== machinesPage.generation) return;
    $('machines-table').tBodies[0].replaceChildren(...data.machines.map(machineRow));
    $('machines-empty').textContent = state ? `No ${state} machines.` : 'No machines have enrolled yet.';
    $('machines-empty').hidden = data.machines.length > 0;
  } catch (e) {
    if (gen === machinesPage.generation && !e.signedOut) showError($('machines-error'), e.message);
  }
}

function machineRow(m) {
  const actions = Object.entries(MACHINE_ACTIONS)
    .filter(([, a]) => a.when(m))
    .map(([name, a]) => h('button', {
      type: 'button', class: name === 'delete' || name === 'reject' ? 'small link-danger' : 'small',
      dataset: { action: name }, text: a.label, 'aria-label': `${a.label}: ${m.hostname}`,
      onClick: () => machineAction(m, name),
    }));
  return h('tr', { dataset: { machineId: m.machine_id } },
    h('td', { title: m.machine_id, text: m.hostname }),
    h('td', {}, tagList(m.tags)),
    h('td', {}, m.ephemeral ? h('span', { class: 'badge ephemeral', text: 'Ephemeral' }) : DASH),
    h('td', {}, stateBadge(m.state, 'mstate')),
    timeCell(m.last_seen, 'Never'),
    h('td', { class: 'nowrap' }, h('a', { href: keyHref(m.auth_key_id), class: 'mono', text: m.auth_key_prefix })),
    h('td', { class: 'actions' }, actions));
}

function machineAction(m, name) {
  if (name === 'set_tags') return openSetTags(m);
  const a = MACHINE_ACTIONS[name];
  confirmAction({
    title: `${a.label} machine`,
    text: a.text(`"${m.hostname}"`),
    okLabel: a.label,
    run: (requestId) => api.machines(name, { machine_id: m.machine_id, request_id: requestId }),
    done: () => { toast(`${a.label}: ${m.hostname} — done.`); loadMachines(); },
  });
}

function openSetTags(m) {
  setTagsState.machine = m;
  setTagsState.action.reset();
  $('st-machine').textContent = `Machine "${m.hostname}" (${m.machine_id})`;
  $('st-tags').value = (m.tags || []).join(', ');
  clearErrors('st-tags-error', 'st-error');
  $('set-tags').showModal();
  $('st-tags').focus();
}

async function submitSetTags(event) {
  event.preventDefault();
  clearErrors('st-tags-error', 'st-error');
  const m = setTagsState.machine;
  const tags = parseTags($('st-tags').value);
  const problem = badTagMessage(tags);
  if (problem) {
    showError($('st-tags-error'), problem);
    return $('st-tags').focus();
  }
  const submit = $('st-submit');
  submit.disabled = true;
  try {
    await api.machines('set_tags', { machine_id: m.machine_id, tags, request_id: setTagsState.action.requestId() });
    setTagsState.action.settle(null);
    $('set-tags').close();
    toast(`Tags of ${m.hostname} saved.`);
    loadMachines();
  } catch (e) {
    setTagsState.action.settle(e);
    if (!e.signedOut) showFieldError(e, { tags: ['st-tags-error', 'st-tags'] }, 'st-error');
  } finally {
    submit.disabled = false;
  }
}

function setupMachinesPage() {
  $('machine-filter-state').addEventListener('change', loadMachines);
  $('machines-refresh').addEventListener('click', loadMachines);
  $('set-tags-form').addEventListener('submit', submitSetTags);
  $('st-cancel').addEventListener('click', () => $('set-tags').close());
}

// ---------------------------------------------------------------------------------------------
// Cluster page: polled every 2 s while shown
// ---------------------------------------------------------------------------------------------

const cluster = { active: false, generation: 0, timer: null };

function startClusterPolling() {
  stopClusterPolling();
  cluster.active = true;
  pollCluster();
}

function stopClusterPolling() {
  cluster.active = false;
  cluster.generation += 1; // an answer still on its way is dropped
  clearTimeout(cluster.timer);
}

async function pollCluster() {
  const gen = cluster.generation;
  const current = () => cluster.active && gen === cluster.generation;
  try {
    const data = await api.cluster();
    if (!current()) return;
    renderCluster(data);
    showError($('cluster-error'), '');
    const now = new Date();
    $('cluster-updated').textContent = now.toLocaleTimeString();
    $('cluster-updated').title = now.toLocaleString();
  } catch (e) {
    if (current()) showError($('cluster-error'), e.message);
  } finally {
    // The next poll starts 2 s after this one ends, so polls never pile up.
    if (current()) cluster.timer = setTimeout(pollCluster, 2000);
  }
}

function renderCluster(data) {
  const show = (v) => (v == null ? DASH : String(v));
  $('cluster-leader').textContent = data.leader != null ? `Leader: node ${data.leader}` : 'No leader';
  const rows = (data.nodes || []).map((n) => {
    const unreachable = n.reachable === false;
    const serving = String(n.id) === String(data.served_by);
    return h('tr', { dataset: { nodeId: String(n.id) }, class: unreachable ? 'unreachable-row' : null, title: unreachable ? (n.error || 'unreachable') : null },
      h('td', { class: 'nowrap' }, String(n.id), serving ? h('span', { class: 'serving', text: 'serving this page' }) : null),
      h('td', { class: 'mono', text: n.api_addr || DASH }),
      h('td', { class: 'role' }, unreachable ? h('span', { class: 'badge unreachable', text: 'unreachable' }) : show(n.role)),
      h('td', { text: n.voter ? 'voter' : 'learner' }),
      h('td', { class: 'num', text: show(n.term) }),
      h('td', { class: 'num', text: show(n.last_log_index) }),
      h('td', { class: 'num', text: show(n.last_applied_index) }),
      h('td', { class: 'num', text: show(n.lag) }));
  });
  $('cluster-table').tBodies[0].replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------
// Orgs page (operator): orgs, their API keys, new API keys shown once
// ---------------------------------------------------------------------------------------------

const orgsPage = { generation: 0, createOrg: new UserAction(), createKey: new UserAction(), org: null };

async function loadOrgs() {
  const gen = ++orgsPage.generation;
  showError($('orgs-error'), '');
  try {
    const [orgData, keyData] = await Promise.all([api.orgs('list_orgs'), api.orgs('list_api_keys')]);
    if (gen !== orgsPage.generation) return;
    const names = new Map(orgData.orgs.map((o) => [o.org_id, o.name]));
    $('orgs-table').tBodies[0].replaceChildren(...orgData.orgs.map(orgRow));
    $('orgs-empty').hidden = orgData.orgs.length > 0;
    $('api-keys-table').tBodies[0].replaceChildren(...keyData.api_keys.map((k) => apiKeyRow(k, names)));
  } catch (e) {
    if (gen === orgsPage.generation && !e.signedOut) showError($('orgs-error'), e.message);
  }
}

function orgRow(o) {
  return h('tr', { dataset: { orgId: o.org_id } },
    h('td', { text: o.name }),
    h('td', { class: 'mono', text: o.org_id }),
    timeCell(o.created_at),
    h('td', { class: 'actions' }, h('button', {
      type: 'button', class: 'small create-api-key', text: 'Create API key',
      'aria-label': `Create API key for ${o.name}`, onClick: () => openCreateApiKey(o),
    })));
}

function apiKeyState(k) {
  if (k.revoked_at) return 'revoked';
  if (k.expires_at && Date.parse(k.expires_at) <= Date.now()) return 'expired';
  return 'valid';
}

function apiKeyRow(k, names) {
  const state = apiKeyState(k);
  const org = k.scope === 'operator' ? 'operator' : (names.get(k.org_id) || k.org_id || DASH);
  const canRevoke = state !== 'revoked' && k.scope !== 'operator';
  return h('tr', { dataset: { apiKeyId: k.api_key_id } },
    h('td', { class: 'mono', text: k.api_key_id }),
    h('td', { text: org }),
    h('td', { text: k.description || DASH }),
    h('td', { text: k.scopes ? k.scopes.join(', ') : 'all' }),
    timeCell(k.created_at),
    timeCell(k.expires_at, 'Never'),
    timeCell(k.last_used_at, 'Never'),
    h('td', {}, stateBadge(state)),
    h('td', { class: 'actions' }, canRevoke ? h('button', {
      type: 'button', class: 'small link-danger', text: 'Revoke', 'aria-label': `Revoke API key ${k.api_key_id}`,
      onClick: () => confirmAction({
        title: 'Revoke API key',
        text: `Revoke API key ${k.api_key_id}${k.description ? ` ("${k.description}")` : ''} of ${org}? Anything using it is refused from now on.`,
        okLabel: 'Revoke',
        run: (requestId) => api.orgs('revoke_api_key', { api_key_id: k.api_key_id, request_id: requestId }),
        done: () => { toast(`Revoked API key ${k.api_key_id}.`); loadOrgs(); },
      }),
    }) : null));
}

async function submitCreateOrg(event) {
  event.preventDefault();
  const name = $('co-name').value.trim();
  if (!name) {
    showError($('co-error'), 'Enter a name for the org.');
    return $('co-name').focus();
  }
  showError($('co-error'), '');
  $('co-submit').disabled = true;
  try {
    const org = await api.orgs('create_org', { name, request_id: orgsPage.createOrg.requestId() });
    orgsPage.createOrg.settle(null);
    $('co-name').value = '';
    toast(`Created org ${org.name} (${org.org_id}).`);
    loadOrgs();
  } catch (e) {
    orgsPage.createOrg.settle(e);
    if (!e.signedOut) showError($('co-error'), e.message);
  } finally {
    $('co-submit').disabled = false;
  }
}

const CAK_ERRORS = ['cak-description-error', 'cak-expires_in-error', 'cak-scopes-error', 'cak-error'];
const CAK_FIELDS = {
  description: ['cak-description-error', 'cak-description'],
  expires_in: ['cak-expires_in-error', 'cak-expiry'],
  scopes: ['cak-scopes-error', null],
};

function openCreateApiKey(org) {
  orgsPage.org = org;
  orgsPage.createKey.reset();
  $('create-api-key-form').reset();
  clearErrors(...CAK_ERRORS);
  $('cak-org').textContent = `For org "${org.name}" (${org.org_id})`;
  $('create-api-key').showModal();
  $('cak-description').focus();
}

async function submitCreateApiKey(event) {
  event.preventDefault();
  clearErrors(...CAK_ERRORS);
  const body = { org_id: orgsPage.org.org_id, description: $('cak-description').value, request_id: orgsPage.createKey.requestId() };
  if ($('cak-expiry').value) body.expires_in = Number($('cak-expiry').value);
  const scopes = [...document.querySelectorAll('#create-api-key fieldset.scopes input:checked')].map((i) => i.value);
  if (scopes.length > 0) body.scopes = scopes; // none ticked: every permission
  const submit = $('cak-submit');
  submit.disabled = true;
  try {
    const created = await api.orgs('create_api_key', body);
    orgsPage.createKey.settle(null);
    $('create-api-key').close();
    if (created.key) openSecretDialog('aks', 'api-key-secret', created.key);
    else toast('The API key was created, but the server did not return its secret. Revoke it and create another.', { error: true });
  } catch (e) {
    orgsPage.createKey.settle(e);
    if (e.signedOut) return;
    if (e.code === 'already_created' || e.code === 'request_id_reused') {
      const message = e.code === 'already_created' ? e.message
        : 'The earlier try may have created an API key (check the list below). Press Create again to create one with these settings.';
      showError($('cak-error'), message);
      orgsPage.createKey.reset();
      loadOrgs();
    } else {
      showFieldError(e, CAK_FIELDS, 'cak-error');
    }
  } finally {
    submit.disabled = false;
  }
}

function setupOrgsPage() {
  $('create-org').addEventListener('submit', submitCreateOrg);
  $('create-api-key-form').addEventListener('submit', submitCreateApiKey);
  $('cak-cancel').addEventListener('click', () => $('create-api-key').close());
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

function init() {
  $('signin').addEventListener('submit', signInSubmit);
  $('signout').addEventListener('click', () => signOut());
  setupKeysPage();
  setupCreateKeyDialog();
  setupSecretDialog('ks', 'key-secret', () => { if (parseRoute()?.name === 'keys') reloadKeys(); });
  setupSecretDialog('aks', 'api-key-secret', () => loadOrgs());
  setupConfirmDialog();
  setupKeyDetail();
  setupMachinesPage();
  setupOrgsPage();
  window.addEventListener('hashchange', () => route(true));
  loadClusterCa();
  restoreSession();
}

init();
