//! Everything that speaks the OCI distribution protocol: image references, registry auth,
//! reproducible layers, daemonless image assembly and push, pushing an OCI image layout, image mutation (APM agent
//! injection), pulling and unpacking, and copying images between registries.
//!
//! TLS is rustls with the `ring` provider; the process must install it once at start
//! (`rustls::crypto::ring::default_provider().install_default()`).

pub mod assemble;
pub mod auth;
pub mod client;
pub mod copy;
pub mod layer;
pub mod layout;
pub mod mutate;
pub mod pull;
pub mod reference;
pub mod session;

pub use assemble::{assemble_and_push, assemble_checked, AssembleError, AssembleSpec, PushedImage};
pub use auth::{load_docker_config, AuthFileError, RegistryAuth, RegistryOptions};
pub use client::{human_bytes, Platform, RegistryError};
pub use copy::{
    copy_image, BlobLocation, BlobLocations, CopyError, CopyEvent, CopyOptions, CopyReport, TargetReport, TransferSlots,
    TargetState,
};
pub use session::RetryPolicy;
pub use layout::{push_layout, LayoutError};
pub use layer::{build_layer, BuiltLayer, LayerEntry, LayerError, LayerSpec};
pub use mutate::{java_evidence, mutate_and_push, MutateError, MutateSpec};
pub use pull::{pull_image, pull_image_for, unpack_archive, unpack_layers, PullError, PulledImage};
pub use reference::{ImageRef, ReferenceError};
