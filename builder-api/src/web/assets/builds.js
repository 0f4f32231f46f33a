// The builds list: the tenant's builds, newest first, refreshed every few seconds.
'use strict';

(() => {
  const { $ } = Kiln;
  const REFRESH_MS = 3000;

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function row(b) {
    const tr = document.createElement('tr');
    tr.dataset.id = b.id;
    const href = '/ui/builds/' + encodeURIComponent(b.id);
    const link = document.createElement('a');
    link.href = href;
    link.textContent = '#' + b.id;
    cell(tr, link);
    const badge = document.createElement('span');
    Kiln.stateBadge(badge, b.state);
    if (b.reason) badge.title = b.reason;
    cell(tr, badge);
    cell(tr, b.app);
    cell(tr, Kiln.shortRef(b.ref));
    const commit = document.createElement('code');
    commit.textContent = Kiln.shortCommit(b.commit);
    commit.title = b.commit;
    cell(tr, commit);
    const queued = cell(tr, Kiln.ago(b.queued_at), 'muted');
    queued.title = new Date(b.queued_at).toLocaleString();
    cell(tr, Kiln.buildDuration(b), 'num');
    const digest = document.createElement('code');
    digest.textContent = Kiln.shortDigest(b.image_digest);
    if (b.image) digest.title = b.image;
    cell(tr, digest);
    // The whole row opens the build (the link stays the accessible target).
    tr.addEventListener('click', (ev) => {
      if (ev.target.closest('a') || window.getSelection().toString()) return;
      location.href = href;
    });
    return tr;
  }

  function query() {
    const p = new URLSearchParams();
    const app = $('filter-app').value.trim();
    const state = $('filter-state').value;
    if (app) p.set('app', app);
    if (state) p.set('state', state);
    return p;
  }

  async function refresh() {
    const p = query();
    p.set('limit', '100');
    const body = await Kiln.apiJson('/api/v1/builds?' + p.toString());
    const tbody = $('builds');
    const frag = document.createDocumentFragment();
    for (const b of body.builds) frag.appendChild(row(b));
    tbody.replaceChildren(frag);
    $('empty').hidden = body.builds.length > 0;
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    Kiln.showError('');
  }

  Kiln.boot(async () => {
    const params = new URLSearchParams(location.search);
    $('filter-app').value = params.get('app') || '';
    $('filter-state').value = params.get('state') || '';
    $('builds-section').hidden = false;
    const onFilter = () => {
      const p = query();
      history.replaceState(null, '', p.toString() ? '?' + p.toString() : location.pathname);
      refresh().catch((e) => Kiln.showError(e.message));
    };
    $('filter-state').addEventListener('change', onFilter);
    $('filter-app').addEventListener('change', onFilter);
    $('filters').addEventListener('submit', (ev) => { ev.preventDefault(); onFilter(); });
    await refresh(); // a refused token surfaces here, before the timer starts
    let timer = null;
    const tick = async () => {
      if (!document.hidden) {
        try { await refresh(); } catch (e) {
          if (e instanceof Kiln.HttpError && e.status === 401) { location.reload(); return; }
          Kiln.showError('Could not refresh: ' + e.message);
        }
      }
      timer = setTimeout(tick, REFRESH_MS);
    };
    timer = setTimeout(tick, REFRESH_MS);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) { clearTimeout(timer); tick(); }
    });
  });
})();
