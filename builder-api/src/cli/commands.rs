//! The client commands on builds, releases, tenants and tokens: each one API call (or two), a
//! table or a line for people, the API's JSON with `-o json`.

use anyhow::{bail, Context as _};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::Api;
use super::follow::follow_build;
use super::output::{ago, duration, print_json, short_digest, state_color, text, Align, Cell, Output, Style, Table};

pub async fn builds(api: &Api, app: Option<String>, state: Option<String>, limit: u32) -> anyhow::Result<u8> {
    let mut query = vec![("limit", limit.to_string())];
    query.extend(app.map(|a| ("app", a)));
    query.extend(state.map(|s| ("state", s)));
    let body = api.get("/api/v1/builds", &query).await?;
    match api.output {
        Output::Json => print_json(&body),
        Output::Table => print!("{}", builds_table(&body, &Style::stdout())),
    }
    Ok(0)
}

/// The builds list as a table, with the failure reason last.
pub fn builds_table(body: &Value, style: &Style) -> String {
    use Align::{Left, Right};
    let mut table = Table::new(&[
        ("ID", Right),
        ("STATE", Left),
        ("APP", Left),
        ("REF", Left),
        ("COMMIT", Left),
        ("DURATION", Right),
        ("DIGEST", Left),
        ("REASON", Left),
    ]);
    for b in body["builds"].as_array().into_iter().flatten() {
        let took = match (b["started_at"].as_i64(), b["finished_at"].as_i64()) {
            (Some(s), Some(f)) => duration(f - s),
            (Some(_), None) => "running".into(),
            _ => "-".into(),
        };
        let git_ref = b["ref"].as_str().unwrap_or("-");
        let git_ref = git_ref.strip_prefix("refs/heads/").or_else(|| git_ref.strip_prefix("refs/")).unwrap_or(git_ref);
        let state = b["state"].as_str().unwrap_or_default();
        table.row(vec![
            text(b, "id").into(),
            Cell::colored(state, state_color(state)),
            format!("{}/{}", b["tenant"].as_str().unwrap_or(""), b["app"].as_str().unwrap_or("")).into(),
            git_ref.into(),
            b["commit"].as_str().unwrap_or("").get(..12).unwrap_or("").into(),
            took.into(),
            short_digest(b["image_digest"].as_str()).into(),
            b["reason"].as_str().unwrap_or("").lines().next().unwrap_or("").into(),
        ]);
    }
    table.render(style)
}

/// `kiln build APP`: queues a build of a ref's tip or of a commit, then follows it like
/// `kiln logs -f` (exit code = the build's result), unless `detach`.
pub async fn build(api: &Api, app: &str, git_ref: Option<String>, commit: Option<String>, detach: bool) -> anyhow::Result<u8> {
    let mut body = json!({});
    if let Some(r) = git_ref {
        body["ref"] = json!(r);
    }
    if let Some(c) = commit {
        body["commit"] = json!(c);
    }
    if body == json!({}) {
        bail!("say what to build: --ref BRANCH_OR_TAG (its tip) or --commit SHA");
    }
    let answer = api.post(&format!("/api/v1/apps/{app}/builds"), &body).await?;
    queued(api, &answer, detach, None).await
}

/// `kiln retry ID`: the same app, ref and commit again, followed like `kiln build`.
pub async fn retry(api: &Api, id: i64, detach: bool) -> anyhow::Result<u8> {
    let answer = api.post(&format!("/api/v1/builds/{id}/retry"), &json!({})).await?;
    queued(api, &answer, detach, Some(id)).await
}

/// A build just queued (`{"build": …}`): its id, then its log until it ends.
async fn queued(api: &Api, answer: &Value, detach: bool, retry_of: Option<i64>) -> anyhow::Result<u8> {
    let id = answer["build"]["id"].as_i64().context("Kiln's answer names no build")?;
    if api.output == Output::Json {
        print_json(answer);
        return Ok(0);
    }
    if detach {
        // Alone on stdout, for `id=$(kiln build web --ref main -d)`.
        println!("{id}");
        return Ok(0);
    }
    let b = &answer["build"];
    let of = retry_of.map(|old| format!(" (retry of build {old})")).unwrap_or_default();
    eprintln!("build {id}{of} of {}/{} at {} queued", text(b, "tenant"), text(b, "app"), b["commit"].as_str().unwrap_or_default());
    follow_build(api, id).await
}

pub async fn cancel(api: &Api, id: i64) -> anyhow::Result<u8> {
    let answer = api.post(&format!("/api/v1/builds/{id}/cancel"), &json!({})).await?;
    match api.output {
        Output::Json => print_json(&answer),
        Output::Table => println!("build {id}: {}", text(&answer, "result")),
    }
    Ok(0)
}

/// `kiln releases APP`: per Deployment, what runs now, then the rollouts, newest first.
pub async fn releases(api: &Api, app: &str) -> anyhow::Result<u8> {
    let answer = api.get(&format!("/api/v1/apps/{app}/releases"), &[]).await?;
    if api.output == Output::Json {
        print_json(&answer);
        return Ok(0);
    }
    let releases = answer["releases"].as_array().cloned().unwrap_or_default();
    if releases.is_empty() {
        println!("app {app} has no subscriptions: nothing is deployed from it (POST /api/v1/apps/{app}/subscriptions)");
        return Ok(0);
    }
    let style = Style::stdout();
    use Align::{Left, Right};
    let mut current =
        Table::new(&[("CLUSTER", Left), ("DEPLOYMENT", Left), ("SUBSCRIPTION", Right), ("POLICY", Left), ("STRATEGY", Left), ("CURRENT", Left)]);
    let mut history = Table::new(&[
        ("ROLLOUT", Right),
        ("CLUSTER", Left),
        ("DEPLOYMENT", Left),
        ("STRATEGY", Left),
        ("STATE", Left),
        ("DIGEST", Left),
        ("TRIGGER", Left),
        ("WHEN", Left),
        ("REASON", Left),
    ]);
    for r in &releases {
        let deployment = format!("{}/{} ({})", text(r, "namespace"), text(r, "deployment"), text(r, "container"));
        current.row(vec![
            text(r, "cluster").into(),
            deployment.clone().into(),
            text(r, "subscription_id").into(),
            text(r, "policy").into(),
            text(&r["strategy"], "kind").into(),
            short_digest(r["digest"].as_str()).into(),
        ]);
        for h in r["history"].as_array().into_iter().flatten() {
            let state = h["state"].as_str().unwrap_or_default();
            history.row(vec![
                text(h, "id").into(),
                text(h, "cluster").into(),
                deployment.clone().into(),
                text(&h["strategy"], "kind").into(),
                Cell::colored(state, state_color(state)),
                short_digest(h["digest"].as_str()).into(),
                text(h, "trigger").into(),
                ago(h["finished_at"].as_i64().or(h["created_at"].as_i64())).into(),
                h["reason"].as_str().unwrap_or_default().into(),
            ]);
        }
    }
    print!("{}\n{}", current.render(&style), history.render(&style));
    // The steps of blue-green and canary releases, oldest first within each.
    for r in &releases {
        for h in r["history"].as_array().into_iter().flatten().filter(|h| h["steps"].as_array().is_some_and(|s| !s.is_empty())) {
            println!("\nrollout {} ({}):", text(h, "id"), text(&h["strategy"], "kind"));
            for st in h["steps"].as_array().into_iter().flatten() {
                let by = st["actor"].as_str().map(|a| format!(" (by {a})")).unwrap_or_default();
                println!("  {:>12}  {}{by}", ago(st["at"].as_i64()), text(st, "step"));
            }
        }
    }
    Ok(0)
}

/// `kiln promote|abort APP SUBSCRIPTION`.
pub async fn decide(api: &Api, app: &str, subscription: i64, decision: &str) -> anyhow::Result<u8> {
    let answer = api.post(&format!("/api/v1/apps/{app}/subscriptions/{subscription}/{decision}"), &json!({})).await?;
    match api.output {
        Output::Json => print_json(&answer),
        Output::Table => println!("{decision} of rollout {} asked (kiln releases {app})", text(&answer, "rollout")),
    }
    Ok(0)
}

/// `kiln strategy APP SUBSCRIPTION KIND|JSON`.
pub async fn strategy(api: &Api, app: &str, subscription: i64, strategy: &str) -> anyhow::Result<u8> {
    let strategy: Value = serde_json::from_str(strategy).unwrap_or_else(|_| json!(strategy));
    let path = format!("/api/v1/apps/{app}/subscriptions/{subscription}/strategy");
    let answer = api.call(reqwest::Method::PUT, &path, &[], Some(&json!({ "strategy": strategy }))).await?;
    match api.output {
        Output::Json => print_json(&answer),
        Output::Table => println!("subscription {subscription} of {app} releases with {}", answer["subscription"]["strategy"]),
    }
    Ok(0)
}

/// `kiln rollback APP --to BUILD|DIGEST`: every subscription (or one cluster's) back to an
/// earlier successful build's image.
pub async fn rollback(api: &Api, app: &str, to: &str, cluster: Option<String>) -> anyhow::Result<u8> {
    let mut body = if let Ok(build) = to.parse::<i64>() {
        json!({ "build": build })
    } else if to.starts_with("sha256:") {
        json!({ "digest": to })
    } else {
        bail!("--to {to:?} is neither a build id (42) nor a digest (sha256:…); `kiln builds --app {app} --state Succeeded` lists both");
    };
    if let Some(c) = cluster {
        body["cluster"] = json!(c);
    }
    let answer = api.post(&format!("/api/v1/apps/{app}/rollback"), &body).await?;
    match api.output {
        Output::Json => print_json(&answer),
        Output::Table => {
            let ids: Vec<String> = answer["rollouts"].as_array().into_iter().flatten().map(Value::to_string).collect();
            println!("rolling {app} back to {}: rollouts {} queued (kiln releases {app})", text(&answer, "digest"), ids.join(", "));
        }
    }
    Ok(0)
}

pub async fn tenants(api: &Api) -> anyhow::Result<u8> {
    let answer = api.get("/api/v1/tenants", &[]).await?;
    if api.output == Output::Json {
        print_json(&answer);
        return Ok(0);
    }
    use Align::{Left, Right};
    let mut table = Table::new(&[("ID", Right), ("NAME", Left), ("CREATED", Left), ("NAMESPACE", Left), ("REGISTRY PROJECT", Left), ("CAP", Right)]);
    for t in answer["tenants"].as_array().into_iter().flatten() {
        let s = &t["settings"];
        table.row(vec![
            text(t, "id").into(),
            text(t, "name").into(),
            ago(t["created_at"].as_i64()).into(),
            text(s, "namespace").into(),
            text(s, "registry_project").into(),
            text(s, "max_concurrent_builds").into(),
        ]);
    }
    print!("{}", table.render(&Style::stdout()));
    Ok(0)
}

/// `kiln tokens [TENANT]`: the tenant's tokens (never their secrets); the token's own tenant by
/// default.
pub async fn tokens(api: &Api, tenant: Option<String>) -> anyhow::Result<u8> {
    let tenant = match tenant {
        Some(t) => t,
        None => api.own_tenant().await?.context("an admin token belongs to no tenant: name one, kiln tokens TENANT")?,
    };
    let answer = api.call(Method::GET, &format!("/api/v1/tenants/{tenant}/tokens"), &[], None).await?;
    if api.output == Output::Json {
        print_json(&answer);
        return Ok(0);
    }
    use Align::{Left, Right};
    let mut table = Table::new(&[("ID", Right), ("NAME", Left), ("ROLE", Left), ("CREATED", Left), ("LAST USED", Left), ("EXPIRES", Left), ("STATE", Left)]);
    let now = chrono::Utc::now().timestamp_millis();
    for t in answer["tokens"].as_array().into_iter().flatten() {
        let expires = t["expires_at"].as_i64();
        let state = match (t["revoked_at"].as_i64(), expires) {
            (Some(_), _) => Cell::colored("revoked", "31"),
            (None, Some(at)) if at <= now => Cell::colored("expired", "33"),
            _ => Cell::colored("active", "32"),
        };
        let expires = match expires {
            Some(at) if at > now => format!("in {}", duration(at - now)),
            Some(at) => ago(Some(at)),
            None => "never".into(),
        };
        table.row(vec![
            text(t, "id").into(),
            text(t, "name").into(),
            text(t, "role").into(),
            ago(t["created_at"].as_i64()).into(),
            ago(t["last_used_at"].as_i64()).into(),
            expires.into(),
            state,
        ]);
    }
    print!("{}", table.render(&Style::stdout()));
    Ok(0)
}

/// `kiln notifications APP|--tenant T [--set FILE]`: reads, or replaces, a notification list.
pub async fn notifications(api: &Api, app: Option<String>, tenant: Option<String>, set: Option<std::path::PathBuf>) -> anyhow::Result<u8> {
    let path = match (&app, &tenant) {
        (Some(app), _) => format!("/api/v1/apps/{app}/notifications"),
        (None, Some(tenant)) => format!("/api/v1/tenants/{tenant}/notifications"),
        (None, None) => bail!("name an app, or --tenant T for the targets of every app of a tenant"),
    };
    let answer = match set {
        Some(file) => {
            let text = super::apps::read_input(&file)?;
            let body: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON: expected {{\"targets\": [...]}}", file.display()))?;
            api.call(Method::PUT, &path, &[], Some(&body)).await?
        }
        None => api.get(&path, &[]).await?,
    };
    if api.output == Output::Json {
        print_json(&answer);
        return Ok(0);
    }
    let mut table = Table::new(&[("FOR", Align::Left), ("KIND", Align::Left), ("TARGET", Align::Left), ("EVENTS", Align::Left), ("SECRET", Align::Left)]);
    let own = app.clone().map_or_else(|| format!("tenant {}", tenant.clone().unwrap_or_default()), |a| format!("app {a}"));
    let inherited = answer["tenant_targets"].as_array().into_iter().flatten().map(|t| ("tenant", t));
    for (owner, t) in answer["targets"].as_array().into_iter().flatten().map(|t| ("own", t)).chain(inherited) {
        let events: Vec<&str> = t["events"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        table.row(vec![
            if owner == "own" { own.clone() } else { "tenant".to_string() }.into(),
            text(t, "kind").into(),
            text(t, "target").into(),
            events.join(",").into(),
            if t["has_secret"] == true { "set" } else { "-" }.into(),
        ]);
    }
    print!("{}", table.render(&Style::stdout()));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builds_table_keeps_its_columns_aligned_whatever_the_lengths() {
        let body = json!({"builds": [
            {"id": 7, "state": "Succeeded", "tenant": "t", "app": "a", "ref": "refs/heads/main", "commit": "0123456789abcdef",
             "started_at": 1000, "finished_at": 3500, "image_digest": "sha256:0123456789abcdef"},
            {"id": 12345, "state": "Failed", "tenant": "payments-platform", "app": "ledger-service", "ref": "refs/heads/feature/very-long-branch-name",
             "commit": "fedcba9876543210", "started_at": 1000, "finished_at": 2000, "reason": "compile failed (exit code 2): ./main.go:4:2: undefined: x"},
        ]});
        let table = builds_table(&body, &Style::plain());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        // Every column starts at the same character in every line.
        for header in ["STATE", "APP", "REF", "COMMIT", "DIGEST", "REASON"] {
            let at = lines[0].find(header).unwrap();
            // The first build has no reason: its line ends before that column.
            for line in lines[1..].iter().filter(|l| header != "REASON" || l.len() > at) {
                assert!(line.len() > at && line.as_bytes()[at - 1] == b' ' && line.as_bytes()[at] != b' ', "{header} at {at}:\n{table}");
            }
        }
        assert!(lines[1].starts_with("    7  Succeeded"), "{table}");
        assert!(lines[2].starts_with("12345  Failed"), "{table}");
        assert!(lines[2].ends_with("./main.go:4:2: undefined: x"), "{table}");
    }
}
