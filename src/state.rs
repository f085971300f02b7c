//! The loaded state: one immutable [`Engine`] (policy package + registry) behind an `ArcSwap`.
//! A request takes one snapshot at its start and finishes on it; a load builds the new engine
//! completely before it is swapped in, so a bad file never replaces a good one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwapOption, Guard};

use crate::decision::{Engine, RequestError};
use crate::policy::{load_package, PolicyLoadError};
use crate::registry::{load_entities, load_snapshot, RegistryError};

/// Where the policy package and registry are read from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Policy package path.
    pub policy: PathBuf,
    /// Registry path and format.
    pub registry: RegistrySource,
}

/// A registry file and its format.
#[derive(Debug, Clone)]
pub enum RegistrySource {
    /// An actor-model registry snapshot.
    Snapshot(PathBuf),
    /// A raw Cedar entities JSON file.
    Entities(PathBuf),
}

/// Why loading failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The policy package is bad.
    #[error("policy package: {0}")]
    Policy(#[from] PolicyLoadError),
    /// The registry is bad.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// The two do not make an engine.
    #[error("engine: {0}")]
    Engine(#[from] RequestError),
}

/// An engine and when it was loaded.
#[derive(Debug)]
pub struct Loaded {
    /// The engine.
    pub engine: Engine,
    /// When it was swapped in.
    pub loaded_at: SystemTime,
}

/// Load and compile the policy package and the registry (validated against the package's
/// schema) into an engine. Does not touch any running state.
pub fn load(sources: &Sources) -> Result<Engine, LoadError> {
    let package = load_package(&sources.policy)?;
    let registry = match &sources.registry {
        RegistrySource::Snapshot(path) => load_snapshot(path, package.schema())?,
        RegistrySource::Entities(path) => load_entities(path, package.schema())?,
    };
    Ok(Engine::new(package, registry)?)
}

/// The server's state: the engine in force (if any) and the last load error.
#[derive(Debug)]
pub struct State {
    sources: Sources,
    current: ArcSwapOption<Loaded>,
    last_error: ArcSwapOption<String>,
}

impl State {
    /// A state with nothing loaded yet.
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            current: ArcSwapOption::empty(),
            last_error: ArcSwapOption::empty(),
        }
    }

    /// Where the state is loaded from.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// Load from the sources; on success swap the new engine in, on failure keep the one in
    /// force and remember the error.
    pub fn reload(&self) -> Result<(), Arc<String>> {
        match load(&self.sources) {
            Ok(engine) => {
                self.install(engine);
                Ok(())
            }
            Err(e) => {
                let message = Arc::new(e.to_string());
                self.last_error.store(Some(message.clone()));
                Err(message)
            }
        }
    }

    /// Swap in an engine built elsewhere.
    pub fn install(&self, engine: Engine) {
        self.current.store(Some(Arc::new(Loaded {
            engine,
            loaded_at: SystemTime::now(),
        })));
        self.last_error.store(None);
    }

    /// The engine in force, for one request. One atomic load; no lock.
    pub fn current(&self) -> Guard<Option<Arc<Loaded>>> {
        self.current.load()
    }

    /// The error of the last failed load, if the last load failed.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }
}
