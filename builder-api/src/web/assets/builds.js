// The builds list: the tenant's builds, newest first, refreshed every few seconds.
'use strict';

(() => {
  const { $ } = Kiln;
  const REFRESH_MS = 3000;

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
    for (const b of body.builds) frag.appendChild(Kiln.buildRow(b));
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
          if (e instanceof Kiln.HttpError && e.status === 401) return; // the token form is back
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
