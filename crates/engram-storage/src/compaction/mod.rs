//! Compaction: the background work that turns WAL records into segments and keeps segments
//! few, off the write path and never blocking recall. Shared workers, no thread per space:
//! the compactor ([`worker`]: flush when due, merge, remove dropped spaces, checkpoint the
//! WAL, release idle spaces) and the indexer ([`indexer`]: HNSW indexes of new segments),
//! both deferring under load ([`load`]). What a flush and a merge do to one space is in
//! [`flush`] and [`merge`].

pub(crate) mod flush;
pub(crate) mod indexer;
pub(crate) mod load;
pub(crate) mod merge;
pub(crate) mod worker;
