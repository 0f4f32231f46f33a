// The apps list: every app the token can see, with its last build.
'use strict';

(() => {
  const { $ } = Kiln;

  function row(app, last) {
    const tr = document.createElement('tr');
    tr.dataset.app = app.name;
    tr.dataset.tenant = app.tenant;
    const href = Kiln.appHref(app.tenant, app.name);
    Kiln.cell(tr, Kiln.link(href, app.name));
    Kiln.cell(tr, app.tenant, 'muted');
    Kiln.cell(tr, app.kind);
    const repo = document.createElement('code');
    repo.textContent = app.project_path || app.git_url;
    repo.title = app.git_url;
    Kiln.cell(tr, repo);
    Kiln.cell(tr, app.branch_filter);
    const image = document.createElement('code');
    image.textContent = app.image_repository;
    Kiln.cell(tr, image);
    if (last) {
      const span = document.createElement('span');
      const badge = document.createElement('span');
      Kiln.stateBadge(badge, last.state);
      span.append(badge, ' ', Kiln.link('/ui/builds/' + encodeURIComponent(last.id), '#' + last.id), ' ', Kiln.ago(last.queued_at));
      Kiln.cell(tr, span);
    } else {
      Kiln.cell(tr, '—', 'muted');
    }
    tr.addEventListener('click', (ev) => {
      if (ev.target.closest('a') || window.getSelection().toString()) return;
      location.href = href;
    });
    return tr;
  }

  Kiln.boot(async () => {
    const [apps, builds] = await Promise.all([Kiln.apiJson('/api/v1/apps'), Kiln.apiJson('/api/v1/builds?limit=500')]);
    // The newest build of each app among the latest ones (an app idle for long shows none).
    const last = new Map();
    for (const b of builds.builds) {
      const key = b.tenant + '/' + b.app;
      if (!last.has(key)) last.set(key, b);
    }
    const frag = document.createDocumentFragment();
    for (const a of apps.apps) frag.appendChild(row(a, last.get(a.tenant + '/' + a.name)));
    $('apps').replaceChildren(frag);
    $('empty').hidden = apps.apps.length > 0;
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    $('apps-section').hidden = false;
  });
})();
