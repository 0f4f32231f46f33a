//! Where webhooks land. Each source verifies its secret, records the delivery (which dedupes
//! redeliveries) together with the builds it starts, and answers at once; the work happens after.

pub mod gitlab;
pub mod harbor;
