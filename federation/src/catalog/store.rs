//! The directory store: the local catalog of a plain-host cluster.
//!
//! ```text
//! STATE/services/<namespace>.<name>.yaml   one Registration per file
//! STATE/policies/<namespace>.<name>.yaml   one PolicySpec per file
//! ```
//! Operators may drop files in by hand (any `*.yaml`/`*.yml` name); the API
//! writes `<namespace>.<name>.yaml`, or the file the entry came from. Every
//! write is atomic (temporary file, fsync, rename), so a crash mid-write
//! leaves the old or the new file, never half of one. [`DirectoryStore::open`]
//! refuses a directory with a bad file; [`DirectoryStore::rescan`] keeps the
//! last good entries of files that became bad and reports them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use strait_api::{ClusterName, TrustDomain};
use tokio::sync::watch;

use super::{
    CatalogError, CatalogSource, Export, FieldError, LocalCatalog, PolicySpec, Registration,
    ServiceKey,
};

const SERVICES: &str = "services";
const POLICIES: &str = "policies";

/// A catalog kept as YAML files in a state directory.
#[derive(Debug)]
pub struct DirectoryStore {
    dir: PathBuf,
    td: TrustDomain,
    cluster: ClusterName,
    inner: Mutex<Files>,
    tx: watch::Sender<Arc<LocalCatalog>>,
}

/// Which file each entry lives in.
#[derive(Debug, Default, Clone)]
struct Files {
    services: BTreeMap<ServiceKey, (PathBuf, Registration)>,
    policies: BTreeMap<ServiceKey, (PathBuf, PolicySpec)>,
}

impl Files {
    fn catalog(&self) -> LocalCatalog {
        LocalCatalog {
            services: self
                .services
                .iter()
                .map(|(k, (_, r))| (k.clone(), r.clone()))
                .collect(),
            policies: self
                .policies
                .iter()
                .map(|(k, (_, p))| (k.clone(), p.clone()))
                .collect(),
        }
    }
}

impl DirectoryStore {
    /// Opens (creating if needed) the store under `state_dir`. Any invalid
    /// file is an error naming the file and the field.
    pub fn open(
        state_dir: &Path,
        td: &TrustDomain,
        cluster: &ClusterName,
    ) -> Result<Self, CatalogError> {
        for sub in [SERVICES, POLICIES] {
            let d = state_dir.join(sub);
            fs::create_dir_all(&d).map_err(|source| CatalogError::Io { path: d, source })?;
        }
        let (files, mut errors) = load(state_dir, td, cluster, &Files::default());
        if !errors.is_empty() {
            return Err(errors.swap_remove(0));
        }
        let (tx, _) = watch::channel(Arc::new(files.catalog()));
        Ok(Self {
            dir: state_dir.to_owned(),
            td: td.clone(),
            cluster: cluster.clone(),
            inner: Mutex::new(files),
            tx,
        })
    }

    /// Re-reads the directory (files edited by hand). Bad files keep their
    /// last good entries; their errors are returned.
    pub fn rescan(&self) -> Vec<CatalogError> {
        let mut g = self.lock();
        let (files, errors) = load(&self.dir, &self.td, &self.cluster, &g);
        *g = files;
        self.publish(&g);
        errors
    }

    pub fn catalog(&self) -> Arc<LocalCatalog> {
        self.tx.borrow().clone()
    }

    pub fn get(&self, key: &ServiceKey) -> Option<Registration> {
        self.lock().services.get(key).map(|(_, r)| r.clone())
    }

    /// Adds or replaces a registration (all its fields, `export` included).
    pub fn register(&self, reg: Registration) -> Result<(), CatalogError> {
        let key = reg.key();
        let mut g = self.lock();
        let path = g
            .services
            .get(&key)
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| self.dir.join(SERVICES).join(key.file_name()));
        reg.validate(&self.td, &self.cluster)
            .map_err(|e| e.in_file(path.clone()))?;
        write_yaml(&path, &reg)?;
        tracing::info!(service = %key, endpoints = reg.endpoints.len(), "registered service");
        g.services.insert(key, (path, reg));
        self.publish(&g);
        Ok(())
    }

    /// Removes a registration and its file.
    pub fn deregister(&self, key: &ServiceKey) -> Result<(), CatalogError> {
        let mut g = self.lock();
        let Some((path, _)) = g.services.get(key) else {
            return Err(CatalogError::NotFound(key.clone()));
        };
        remove_file(path)?;
        g.services.remove(key);
        tracing::info!(service = %key, "deregistered service");
        self.publish(&g);
        Ok(())
    }

    /// Sets who a registered service is exported to.
    pub fn set_export(&self, key: &ServiceKey, export: Export) -> Result<(), CatalogError> {
        let mut reg = self
            .get(key)
            .ok_or_else(|| CatalogError::NotFound(key.clone()))?;
        reg.export = export;
        self.register(reg)
    }

    /// Exports to every linked peer (`to` empty) or only to `to`.
    pub fn export(&self, key: &ServiceKey, to: Vec<ClusterName>) -> Result<(), CatalogError> {
        let export = if to.is_empty() {
            Export::All
        } else {
            Export::To(to)
        };
        self.set_export(key, export)
    }

    pub fn unexport(&self, key: &ServiceKey) -> Result<(), CatalogError> {
        self.set_export(key, Export::None)
    }

    /// Adds or replaces the policy of a service (which need not be
    /// registered here: it may be served by peers only). When it is
    /// registered, its authorization is checked against its ports.
    pub fn set_policy(&self, policy: PolicySpec) -> Result<(), CatalogError> {
        let key = policy.key();
        let mut g = self.lock();
        let path = g
            .policies
            .get(&key)
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| self.dir.join(POLICIES).join(key.file_name()));
        policy.validate().map_err(|e| e.in_file(path.clone()))?;
        if let Some((_, reg)) = g.services.get(&key) {
            // A registered service's ports are known: check against them
            // now rather than fail closed at the next snapshot.
            policy
                .validate_for_ports(&reg.ports)
                .map_err(|e| e.in_file(path.clone()))?;
        }
        write_yaml(&path, &policy)?;
        tracing::info!(service = %key, "set traffic policy");
        g.policies.insert(key, (path, policy));
        self.publish(&g);
        Ok(())
    }

    pub fn remove_policy(&self, key: &ServiceKey) -> Result<(), CatalogError> {
        let mut g = self.lock();
        let Some((path, _)) = g.policies.get(key) else {
            return Err(CatalogError::NoPolicy(key.clone()));
        };
        remove_file(path)?;
        g.policies.remove(key);
        self.publish(&g);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Files> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, files: &Files) {
        let next = files.catalog();
        self.tx.send_if_modified(|cur| {
            if **cur == next {
                return false;
            }
            *cur = Arc::new(next);
            true
        });
    }
}

impl CatalogSource for DirectoryStore {
    fn watch(&self) -> watch::Receiver<Arc<LocalCatalog>> {
        self.tx.subscribe()
    }
}

fn write_yaml<T: Serialize>(path: &Path, value: &T) -> Result<(), CatalogError> {
    let text = serde_yaml_ng::to_string(value).map_err(|source| CatalogError::Parse {
        file: path.to_owned(),
        source,
    })?;
    strait_ca::store::write_atomic(path, text.as_bytes(), 0o644).map_err(CatalogError::Write)
}

fn remove_file(path: &Path) -> Result<(), CatalogError> {
    let io = |source| CatalogError::Io {
        path: path.to_owned(),
        source,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Reads every YAML file of `state/services` and `state/policies`. A file
/// that fails keeps the entries `previous` had from it.
fn load(
    state: &Path,
    td: &TrustDomain,
    cluster: &ClusterName,
    previous: &Files,
) -> (Files, Vec<CatalogError>) {
    let mut errors = Vec::new();
    let services = load_kind(
        &state.join(SERVICES),
        &previous.services,
        |r: &Registration| r.validate(td, cluster).map(|()| r.key()),
        &mut errors,
    );
    let policies = load_kind(
        &state.join(POLICIES),
        &previous.policies,
        |p: &PolicySpec| p.validate().map(|()| p.key()),
        &mut errors,
    );
    (Files { services, policies }, errors)
}

fn load_kind<T: DeserializeOwned + Clone>(
    dir: &Path,
    previous: &BTreeMap<ServiceKey, (PathBuf, T)>,
    check: impl Fn(&T) -> Result<ServiceKey, FieldError>,
    errors: &mut Vec<CatalogError>,
) -> BTreeMap<ServiceKey, (PathBuf, T)> {
    let mut out: BTreeMap<ServiceKey, (PathBuf, T)> = BTreeMap::new();
    let mut paths = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
                let hidden = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                yaml && !hidden
            })
            .collect::<Vec<_>>(),
        Err(source) => {
            errors.push(CatalogError::Io {
                path: dir.to_owned(),
                source,
            });
            Vec::new()
        }
    };
    paths.sort();
    for path in paths {
        let parsed = fs::read_to_string(&path)
            .map_err(|source| CatalogError::Io {
                path: path.clone(),
                source,
            })
            .and_then(|text| {
                strait_api::yaml::from_str::<T>(&text).map_err(|e| match e {
                    strait_api::yaml::YamlError::TooDeep(reason) => CatalogError::Invalid {
                        file: path.clone(),
                        field: "<document>".into(),
                        value: "yaml".into(),
                        reason,
                    },
                    strait_api::yaml::YamlError::Parse(source) => CatalogError::Parse {
                        file: path.clone(),
                        source,
                    },
                })
            })
            .and_then(|v| {
                let key = check(&v).map_err(|e| e.in_file(path.clone()))?;
                Ok((key, v))
            });
        match parsed {
            Ok((key, v)) => {
                if let Some((other, _)) = out.get(&key) {
                    errors.push(CatalogError::Duplicate {
                        file: path.clone(),
                        key,
                        other: other.clone(),
                    });
                    continue;
                }
                out.insert(key, (path, v));
            }
            Err(e) => {
                errors.push(e);
                for (k, (p, v)) in previous.iter().filter(|(_, (p, _))| *p == path) {
                    out.insert(k.clone(), (p.clone(), v.clone()));
                }
            }
        }
    }
    out
}
