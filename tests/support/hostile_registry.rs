//! A registry that answers the distribution API the way a broken or hostile one might, for the
//! copy engine's limits: the one part of the registry tests that cannot be a real
//! `docker-registry` (which validates what it stores). Repositories:
//!
//! - `huge`: its manifest `v1` is a 5 MiB stream of JSON with no Content-Length;
//! - `chain`: manifest `v1` and every manifest after it have a referrer, made up when asked — an
//!   endless chain of valid, content-addressed manifests;
//! - `noisy`: every answer is a 500 whose body never ends.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::support::oci_images::{digest_of, OCI_INDEX, OCI_MANIFEST};

pub struct HostileRegistry {
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
    served: Arc<Mutex<Served>>,
}

#[derive(Default)]
struct Served {
    /// The chain's manifests by digest, in the order made.
    chain: Vec<(String, Vec<u8>)>,
    /// How many error bodies were started.
    errors: usize,
}

impl HostileRegistry {
    pub async fn start() -> HostileRegistry {
        let served = Arc::new(Mutex::new(Served::default()));
        let app = axum::Router::new()
            .route("/v2/", axum::routing::get(|| async { "{}" }))
            .route("/v2/{repo}/manifests/{reference}", axum::routing::get(manifest))
            .route("/v2/{repo}/referrers/{digest}", axum::routing::get(referrers))
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        HostileRegistry { addr, server, served }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// How many manifests of the endless chain were made (each one was asked for).
    pub fn chain_made(&self) -> usize {
        self.served.lock().unwrap().chain.len()
    }

    /// How many endless error bodies were started.
    pub fn errors_started(&self) -> usize {
        self.served.lock().unwrap().errors
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The chain's manifest number `n` (each differs by an annotation, so each has its own digest).
fn chain_manifest(n: usize) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/x-kiln-chain",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
        "layers": [],
        "annotations": {"n": n.to_string()},
    })
    .to_string()
    .into_bytes()
}

fn endless_error(served: &Mutex<Served>) -> Response {
    served.lock().unwrap().errors += 1;
    let chunks = futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 64 << 10])));
    Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).body(Body::from_stream(chunks)).unwrap()
}

async fn manifest(State(served): State<Arc<Mutex<Served>>>, Path((repo, reference)): Path<(String, String)>) -> Response {
    match repo.as_str() {
        "huge" => {
            // 5 MiB in 80 chunks of 64 KiB, streamed (no Content-Length to refuse it by).
            let chunks = futures_util::stream::iter((0..80).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64 << 10]))));
            Response::builder().header("content-type", OCI_MANIFEST).body(Body::from_stream(chunks)).unwrap()
        }
        "chain" => {
            let mut s = served.lock().unwrap();
            if s.chain.is_empty() {
                let first = chain_manifest(0);
                s.chain.push((digest_of(&first), first));
            }
            let found = if reference == "v1" { s.chain.first() } else { s.chain.iter().find(|(d, _)| *d == reference) };
            match found {
                Some((digest, bytes)) => Response::builder()
                    .header("content-type", OCI_MANIFEST)
                    .header("docker-content-digest", digest.as_str())
                    .body(Body::from(bytes.clone()))
                    .unwrap(),
                None => Response::builder().status(StatusCode::NOT_FOUND).body(Body::empty()).unwrap(),
            }
        }
        _ => endless_error(&served),
    }
}

/// Every manifest of the chain has one referrer: the next one, made now.
async fn referrers(State(served): State<Arc<Mutex<Served>>>, Path((repo, digest)): Path<(String, String)>) -> Response {
    if repo != "chain" {
        return endless_error(&served);
    }
    let mut s = served.lock().unwrap();
    let Some(position) = s.chain.iter().position(|(d, _)| *d == digest) else {
        return Response::builder().status(StatusCode::NOT_FOUND).body(Body::empty()).unwrap();
    };
    if position + 1 == s.chain.len() {
        let next = chain_manifest(position + 1);
        s.chain.push((digest_of(&next), next));
    }
    let (next_digest, next_bytes) = &s.chain[position + 1];
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": next_digest, "size": next_bytes.len(), "artifactType": "application/x-kiln-chain"}],
    });
    Response::builder().header("content-type", OCI_INDEX).body(Body::from(index.to_string())).unwrap()
}
