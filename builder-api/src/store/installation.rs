//! Facts about this installation that outlive a restart: its instance id.

use super::{Result, Store};

const INSTANCE_KEY: &str = "instance";

impl Store {
    /// The instance id this store was given, or a new random one (8 lowercase letters and digits)
    /// kept from now on. A configured id wins and is kept too, so unsetting it later does not
    /// turn Kiln into a stranger to its own Jobs.
    pub async fn instance_id(&self, configured: Option<&str>) -> Result<String> {
        if let Some(id) = configured {
            sqlx::query("INSERT INTO installation (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                .bind(INSTANCE_KEY)
                .bind(id)
                .execute(&self.writer)
                .await?;
            return Ok(id.to_string());
        }
        let generated = random_instance_id();
        // Only the first start's id sticks: a concurrent start loses to the stored one.
        sqlx::query("INSERT INTO installation (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(INSTANCE_KEY)
            .bind(&generated)
            .execute(&self.writer)
            .await?;
        let id: String = sqlx::query_scalar("SELECT value FROM installation WHERE key = $1").bind(INSTANCE_KEY).fetch_one(&self.writer).await?;
        Ok(id)
    }
}

fn random_instance_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_instance_id_is_generated_once_and_kept_and_a_configured_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let first = store.instance_id(None).await.unwrap();
        assert_eq!(first.len(), 8);
        assert!(crate::config::validate_instance(&first).is_ok(), "{first}");
        assert_eq!(store.instance_id(None).await.unwrap(), first);
        drop(store);
        let reopened = Store::open(dir.path()).await.unwrap();
        assert_eq!(reopened.instance_id(None).await.unwrap(), first, "a restart keeps the id");
        assert_eq!(reopened.instance_id(Some("west")).await.unwrap(), "west");
        assert_eq!(reopened.instance_id(None).await.unwrap(), "west", "the configured id is kept");
    }
}
