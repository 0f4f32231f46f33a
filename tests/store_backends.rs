//! The store's two backends, SQLite and PostgreSQL, kept in step. The rest of the suite runs on
//! either (`KILN_TEST_STORE`, see `support::postgres`); these tests take a PostgreSQL database
//! whatever the switch says.

use std::collections::BTreeMap;

use builder_api::store::{SecretKey, Store, TableShape};

use crate::support::postgres;

/// What differs between two schemas, one line per difference (empty: the same).
fn differences(sqlite: &BTreeMap<String, TableShape>, postgres: &BTreeMap<String, TableShape>) -> Vec<String> {
    let mut out = vec![];
    for table in sqlite.keys().chain(postgres.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (a, b) = match (sqlite.get(table), postgres.get(table)) {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => {
                out.push(format!("table {table}: only on SQLite"));
                continue;
            }
            (None, _) => {
                out.push(format!("table {table}: only on PostgreSQL"));
                continue;
            }
        };
        for column in a.columns.keys().chain(b.columns.keys()).collect::<std::collections::BTreeSet<_>>() {
            let shown = |c: Option<&(String, bool)>| match c {
                None => "missing".to_string(),
                Some((class, nullable)) => format!("{class}{}", if *nullable { "" } else { " NOT NULL" }),
            };
            let (x, y) = (a.columns.get(column), b.columns.get(column));
            if x != y {
                out.push(format!("{table}.{column}: SQLite {}, PostgreSQL {}", shown(x), shown(y)));
            }
        }
        if a.indexes != b.indexes {
            out.push(format!("{table} indexes: SQLite {:?}, PostgreSQL {:?}", a.indexes, b.indexes));
        }
    }
    out
}

#[tokio::test]
async fn both_backends_migrate_to_the_same_tables_columns_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = SecretKey::generate();
    let sqlite = Store::connect(None, dir.path(), key.clone()).await.unwrap();
    let url = postgres::fresh_database();
    let pg = Store::connect(Some(&url), dir.path(), key.clone()).await.unwrap();
    let (a, b) = (sqlite.schema().await.unwrap(), pg.schema().await.unwrap());
    assert!(a.contains_key("builds") && a["builds"].columns.len() > 10 && !a["builds"].indexes.is_empty(), "{a:?}");
    let diff = differences(&a, &b);
    assert!(diff.is_empty(), "the backends' schemas differ (a migration added to one list only?):\n{}", diff.join("\n"));

    // Opened again, nothing is migrated twice.
    drop(pg);
    let again = Store::connect(Some(&url), dir.path(), key).await.unwrap();
    assert_eq!(again.schema().await.unwrap(), b);
}

#[tokio::test]
async fn kilns_starting_at_once_on_a_new_postgres_database_migrate_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = SecretKey::generate();
    let url = postgres::fresh_database();
    let opens = (0..3).map(|_| Store::connect(Some(&url), dir.path(), key.clone()));
    let stores: Vec<Store> = futures_util::future::join_all(opens).await.into_iter().map(Result::unwrap).collect();
    let versions = postgres::cluster()
        .psql(url.rsplit('/').next().unwrap(), "SELECT string_agg(CAST(version AS TEXT), ',' ORDER BY version) FROM schema_version");
    // One row per migration: the schema was created once, not once per Kiln, and each later
    // migration applied once.
    let versions: Vec<&str> = versions.trim().split(',').collect();
    let mut once = versions.clone();
    once.dedup();
    assert!(versions.len() > 1 && versions[0] == "14" && versions == once, "schema_version: {versions:?}");
    stores[0].create_tenant("team").await.unwrap();
    assert_eq!(stores[2].tenants().await.unwrap().len(), 1);
}
