//! The Secret Service backend (gnome-keyring, KeePassXC, …) over D-Bus, through `oo7`.
//!
//! Every nod item lives in the default collection with two attributes, `nod_service` and
//! `nod_target`, and is found by *exact* attribute match, so service `a` can never reach items
//! of service `a:b` (nothing is joined with a separator). The caller's own attributes are
//! stored beside them; keys starting with `nod_` are reserved.
//!
//! The Secret Service has no transactions. A batch write remembers each item's old value and
//! puts them back if a later item fails, so a refused or failing batch leaves nothing changed,
//! but a crash of the agent in the middle of a batch can leave it half done (unlike the file
//! backend). A locked collection is an error; nod does not unlock it (that prompt is the
//! keyring's, not ours).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use nod_client::proto::{Item, SecretValue};
use oo7::dbus::{Collection, Service};

const ATTR_SERVICE: &str = "nod_service";
const ATTR_TARGET: &str = "nod_target";
/// Attributes that are the keyring's or ours, not the caller's.
fn reserved(key: &str) -> bool {
    key.starts_with("nod_") || key.starts_with("xdg:")
}

/// A Secret Service operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("no item {0:?}")]
    NotFound(String),
    #[error(
        "the Secret Service's default collection is locked; unlock your keyring (log in to \
         the desktop, or `gnome-keyring-daemon --unlock`) and retry"
    )]
    Locked,
    #[error("the Secret Service failed: {0}")]
    Failed(String),
}

impl From<oo7::dbus::Error> for KeyringError {
    fn from(e: oo7::dbus::Error) -> Self {
        match e {
            oo7::dbus::Error::Service(oo7::dbus::ServiceError::IsLocked(_)) => Self::Locked,
            other => Self::Failed(other.to_string()),
        }
    }
}

/// A connection to the Secret Service and its default collection.
#[derive(Debug)]
pub struct SecretService {
    service: Service<'static>,
    /// Serializes batches, so two requests never interleave their items.
    turn: tokio::sync::Mutex<()>,
}

impl SecretService {
    /// Connects, giving up after `timeout` (no session bus, or nothing owns the name).
    pub async fn connect(timeout: Duration) -> Result<Self, KeyringError> {
        let service = tokio::time::timeout(timeout, Service::new())
            .await
            .map_err(|_| KeyringError::Failed("no answer from the session bus".into()))??;
        let keyring = Self {
            service,
            turn: tokio::sync::Mutex::new(()),
        };
        // Fail now, not on the first request, if there is no usable collection.
        keyring.collection().await?;
        Ok(keyring)
    }

    async fn collection(&self) -> Result<Collection<'static>, KeyringError> {
        let c = self.service.default_collection().await?;
        if c.is_locked().await? {
            return Err(KeyringError::Locked);
        }
        Ok(c)
    }

    async fn items_of(
        c: &Collection<'static>,
        service: &str,
        target: Option<&str>,
    ) -> Result<Vec<oo7::dbus::Item<'static>>, KeyringError> {
        let mut attrs = vec![(ATTR_SERVICE, service)];
        if let Some(t) = target {
            attrs.push((ATTR_TARGET, t));
        }
        Ok(c.search_items(&attrs).await?)
    }

    async fn to_item(
        item: &oo7::dbus::Item<'static>,
        with_value: bool,
    ) -> Result<Option<Item>, KeyringError> {
        let attrs: HashMap<String, String> = item.attributes().await?;
        let Some(target) = attrs.get(ATTR_TARGET).cloned() else {
            return Ok(None);
        };
        let value = if with_value {
            let secret = item.secret().await?;
            let text = String::from_utf8(secret.as_bytes().to_vec())
                .map_err(|_| KeyringError::Failed("an item's secret is not UTF-8".into()))?;
            Some(SecretValue::new(text))
        } else {
            None
        };
        Ok(Some(Item {
            target,
            value,
            attributes: attrs.into_iter().filter(|(k, _)| !reserved(k)).collect(),
        }))
    }

    /// Exact read of every target; one missing target fails the whole read.
    pub async fn read(&self, service: &str, targets: &[String]) -> Result<Vec<Item>, KeyringError> {
        let c = self.collection().await?;
        let mut out = Vec::new();
        for t in targets {
            let found = Self::items_of(&c, service, Some(t)).await?;
            let Some(first) = found.first() else {
                return Err(KeyringError::NotFound(t.clone()));
            };
            match Self::to_item(first, true).await? {
                Some(item) => out.push(item),
                None => return Err(KeyringError::NotFound(t.clone())),
            }
        }
        Ok(out)
    }

    /// Items of `service` whose target starts with one of `prefixes` (all if empty).
    pub async fn list(
        &self,
        service: &str,
        prefixes: &[String],
        with_values: bool,
    ) -> Result<Vec<Item>, KeyringError> {
        let c = self.collection().await?;
        let mut out = Vec::new();
        for found in Self::items_of(&c, service, None).await? {
            let Some(item) = Self::to_item(&found, false).await? else {
                continue;
            };
            if !prefixes.is_empty() && !prefixes.iter().any(|p| item.target.starts_with(p)) {
                continue;
            }
            if with_values {
                if let Some(full) = Self::to_item(&found, true).await? {
                    out.push(full);
                }
            } else {
                out.push(item);
            }
        }
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out.dedup_by(|a, b| a.target == b.target);
        Ok(out)
    }

    async fn put_one(
        c: &Collection<'static>,
        service: &str,
        target: &str,
        value: &SecretValue,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), KeyringError> {
        let mut attrs: Vec<(&str, &str)> = attributes
            .iter()
            .filter(|(k, _)| !reserved(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        attrs.push((ATTR_SERVICE, service));
        attrs.push((ATTR_TARGET, target));
        let label = format!("nod: {service}/{target}");
        c.create_item(&label, &attrs, value.expose(), true, None)
            .await?;
        Ok(())
    }

    /// Writes a batch; on failure, items already written get their old values back.
    pub async fn write(
        &self,
        service: &str,
        items: &[(String, SecretValue)],
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), KeyringError> {
        let _turn = self.turn.lock().await;
        let c = self.collection().await?;
        let mut undo: Vec<(String, Option<Item>)> = Vec::new();
        for (target, value) in items {
            let before = match Self::items_of(&c, service, Some(target)).await?.first() {
                Some(old) => Self::to_item(old, true).await?,
                None => None,
            };
            undo.push((target.clone(), before));
            if let Err(e) = Self::put_one(&c, service, target, value, attributes).await {
                Self::roll_back(&c, service, undo).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn roll_back(c: &Collection<'static>, service: &str, undo: Vec<(String, Option<Item>)>) {
        for (target, before) in undo.into_iter().rev() {
            let _ = match before {
                Some(old) => {
                    let value = old.value.unwrap_or_default();
                    Self::put_one(c, service, &target, &value, &old.attributes).await
                }
                None => match Self::items_of(c, service, Some(&target)).await {
                    Ok(found) => {
                        for i in found {
                            let _ = i.delete(None).await;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
        }
    }

    /// Deletes exact targets; all must exist, or nothing is deleted.
    pub async fn delete(&self, service: &str, targets: &[String]) -> Result<(), KeyringError> {
        let _turn = self.turn.lock().await;
        let c = self.collection().await?;
        let mut doomed = Vec::new();
        for t in targets {
            let found = Self::items_of(&c, service, Some(t)).await?;
            if found.is_empty() {
                return Err(KeyringError::NotFound(t.clone()));
            }
            doomed.extend(found);
        }
        for item in doomed {
            item.delete(None).await?;
        }
        Ok(())
    }

    /// Deletes every item of `service` whose target starts with one of `prefixes`.
    pub async fn delete_prefix(
        &self,
        service: &str,
        prefixes: &[String],
    ) -> Result<(), KeyringError> {
        let targets: Vec<String> = self
            .list(service, prefixes, false)
            .await?
            .into_iter()
            .map(|i| i.target)
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        self.delete(service, &targets).await
    }
}
