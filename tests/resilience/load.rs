//! What the under-load cases share: an echo app listening on the intercepted port itself
//! (postern's endpoint for 9080 is `127.0.0.1:9080`), the seed's client, and client loops that
//! run until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use postern_testbed::{SeedTopology, TopologyOptions, EXTERNAL_PORT};

use crate::apps::{AppMode, TestApp};
use crate::client::SeedClient;
use crate::{runtime, sized, Namespaces};

/// The seed's topology without httpbin, an echo app on the intercepted port, and the client;
/// postern is not started yet.
pub struct EchoBehindPostern {
    pub topology: SeedTopology,
    pub config: Vec<PathBuf>,
    pub runtime: Runtime,
    pub app: TestApp,
    pub client: SeedClient,
}

impl EchoBehindPostern {
    pub fn build() -> EchoBehindPostern {
        let topology = SeedTopology::build(TopologyOptions {
            httpbin: false,
            ..TopologyOptions::default()
        })
        .expect("seed topology");
        let config = topology
            .seed_config_app_on_external_port()
            .expect("seed manifests");
        let namespaces = Namespaces::of(&topology);
        let runtime = runtime();
        let app = TestApp::start(
            &runtime,
            &namespaces.pod,
            SocketAddr::from(([0, 0, 0, 0], EXTERNAL_PORT)),
            AppMode::Echo,
        );
        let client = SeedClient::new(&topology, Arc::clone(&namespaces.client));
        EchoBehindPostern {
            topology,
            config,
            runtime,
            app,
            client,
        }
    }
}

/// How many client loops, and how long each phase of an under-load case lasts.
pub fn loops_and_phase_time() -> (usize, Duration) {
    (
        sized(16, 64),
        sized(Duration::from_millis(1500), Duration::from_secs(20)),
    )
}

/// Client loops: `workers` tasks on `runtime`, each calling `attempt(worker, n)` for
/// n = 0, 1, ... one after the other, until [`Loops::stop`].
pub struct Loops {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Loops {
    pub fn start<F, A>(runtime: &Runtime, workers: usize, attempt: A) -> Loops
    where
        A: Fn(usize, u64) -> F + Clone + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for worker in 0..workers {
            let (attempt, stopped) = (attempt.clone(), stopped.clone());
            tasks.spawn_on(
                async move {
                    let mut n = 0u64;
                    while !*stopped.borrow() {
                        attempt(worker, n).await;
                        n += 1;
                    }
                },
                runtime.handle(),
            );
        }
        Loops { stop, tasks }
    }

    /// Lets every loop finish its attempt in flight, then returns.
    pub fn stop(mut self, runtime: &Runtime) {
        let _ = self.stop.send(true);
        runtime.block_on(async { while self.tasks.join_next().await.is_some() {} });
    }
}
