//! A cache of the byte ranges read from an agency's remote store, keyed by object and ETag.
//!
//! Each statement lists a dataset's location again (the exchange keeps no listing cache), and
//! the listing carries every object's ETag: the cache serves a range only for the ETag the
//! latest listing (or HEAD) showed, so a replaced object is read again from the store at the
//! next statement, and the listing itself revalidates access (revoked credentials fail it
//! before any cached byte is used). A range it fetches is asked with `If-Match` on that ETag,
//! so an object replaced after the last listing fails the read instead of filling the cache
//! with another version's bytes. One cache per agency store, bounded in bytes, least recently used out;
//! objects without an ETag, or with a weak one, are not cached.
//!
//! Only S3 stores are cached: an S3 ETag changes with every upload, while HTTP servers
//! commonly derive theirs from size and modification time (review 29: a file replaced by one
//! of the same size and time was served stale). Open (review 29 F1): the If-Match ETag is
//! the one last listed by any statement, so a scan that runs while another statement lists
//! a replaced object reads the new version's bytes under the old footer, as it would
//! without the cache (object_store reads carry no version); the ETag should travel with
//! the scan.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, OBJECT_STORE_COALESCE_DEFAULT, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result, coalesce_ranges,
};

/// (object, ETag, start, end).
type Key = (Path, String, u64, u64);

#[derive(Debug, Default)]
struct State {
    /// The latest metadata listed or read for each object.
    seen: HashMap<Path, ObjectMeta>,
    /// Cached ranges and their last use.
    entries: HashMap<Key, (Bytes, u64)>,
    /// Last use -> key, oldest first.
    order: BTreeMap<u64, Key>,
    bytes: usize,
    tick: u64,
}

impl State {
    fn note(&mut self, meta: &ObjectMeta) {
        let changed = self
            .seen
            .get(&meta.location)
            .is_some_and(|old| old.e_tag != meta.e_tag);
        if changed {
            let stale: Vec<Key> = self
                .entries
                .keys()
                .filter(|k| k.0 == meta.location)
                .cloned()
                .collect();
            for k in stale {
                self.remove(&k);
            }
        }
        self.seen.insert(meta.location.clone(), meta.clone());
    }

    fn remove(&mut self, key: &Key) {
        if let Some((bytes, used)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= bytes.len();
        }
    }

    fn get(&mut self, key: &Key) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let (bytes, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key.clone());
        Some(bytes.clone())
    }

    fn insert(&mut self, key: Key, bytes: Bytes, capacity: usize) {
        if bytes.len() > capacity / 4 {
            return;
        }
        self.remove(&key);
        while self.bytes + bytes.len() > capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((b, _)) = self.entries.remove(&oldest) {
                self.bytes -= b.len();
            }
        }
        self.tick += 1;
        self.bytes += bytes.len();
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (bytes, self.tick));
    }
}

/// An agency's store with a cache of the ranges read from it.
#[derive(Debug)]
pub struct CachedStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<Mutex<State>>,
    capacity: usize,
}

impl CachedStore {
    /// `inner` with a cache of at most `capacity` bytes.
    pub fn new(inner: Arc<dyn ObjectStore>, capacity: usize) -> Self {
        Self {
            inner,
            state: Arc::new(Mutex::new(State::default())),
            capacity,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object's metadata as last seen, if it has a strong ETag to key the cache with
    /// (a weak one, `W/"..."`, says nothing of the bytes and fails a strict If-Match).
    fn current(&self, location: &Path) -> Option<(ObjectMeta, String)> {
        let meta = self.state().seen.get(location).cloned()?;
        let tag = meta.e_tag.clone().filter(|t| !t.starts_with("W/"))?;
        Some((meta, tag))
    }

    /// Fetch a range of the version tagged `tag` from the store.
    async fn fetch(&self, location: &Path, tag: &str, range: Range<u64>) -> Result<Bytes> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            if_match: Some(tag.to_string()),
            ..GetOptions::default()
        };
        self.inner.get_opts(location, options).await?.bytes().await
    }

    /// A range of the version tagged `tag`, from the cache or the store.
    async fn range(&self, location: &Path, tag: &str, range: Range<u64>) -> Result<Bytes> {
        let key = (location.clone(), tag.to_string(), range.start, range.end);
        if let Some(hit) = self.state().get(&key) {
            return Ok(hit);
        }
        let bytes = self.fetch(location, tag, range).await?;
        self.state().insert(key, bytes.clone(), self.capacity);
        Ok(bytes)
    }

    /// Whether a request reads the current version plainly (nothing the cache would change).
    fn plain(options: &GetOptions) -> bool {
        options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head
    }
}

impl fmt::Display for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cached({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CachedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let current = self.current(location);
        // Every range of the listed version as bytes start..end (a suffix or an offset
        // from the listed size).
        let bounded = match (&options.range, &current) {
            _ if !Self::plain(&options) => None,
            (Some(GetRange::Bounded(r)), _) => Some(r.clone()),
            (Some(GetRange::Offset(o)), Some((m, _))) if *o < m.size => Some(*o..m.size),
            (Some(GetRange::Suffix(n)), Some((m, _))) if *n > 0 => {
                Some(m.size.saturating_sub(*n)..m.size)
            }
            _ => None,
        };
        let (Some(range), Some((meta, tag))) = (bounded, current) else {
            let head = options.head;
            let result = self.inner.get_opts(location, options).await?;
            if head {
                self.state().note(&result.meta);
            }
            return Ok(result);
        };
        let bytes = self.range(location, &tag, range.clone()).await?;
        let end = range.start + bytes.len() as u64;
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            meta,
            range: range.start..end,
            attributes: Attributes::default(),
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let Some((_, tag)) = self.current(location) else {
            return self.inner.get_ranges(location, ranges).await;
        };
        let key = |r: &Range<u64>| (location.clone(), tag.clone(), r.start, r.end);
        let mut out: Vec<Option<Bytes>> = {
            let mut state = self.state();
            ranges.iter().map(|r| state.get(&key(r))).collect()
        };
        let missing: Vec<Range<u64>> = ranges
            .iter()
            .zip(&out)
            .filter(|(_, hit)| hit.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        // Fetched as the store would (nearby ranges merged), kept range by range.
        let fetched = coalesce_ranges(
            &missing,
            |r| self.fetch(location, &tag, r),
            OBJECT_STORE_COALESCE_DEFAULT,
        )
        .await?;
        let mut fetched = missing.iter().zip(fetched);
        let mut state = self.state();
        for (slot, r) in out.iter_mut().zip(ranges) {
            if slot.is_none()
                && let Some((_, bytes)) = fetched.next()
            {
                // Its own copy: a slice would keep the whole merged read alive.
                let bytes = Bytes::copy_from_slice(&bytes);
                state.insert(key(r), bytes.clone(), self.capacity);
                *slot = Some(bytes);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let state = Arc::clone(&self.state);
        self.inner
            .list(prefix)
            .inspect_ok(move |meta| {
                state.lock().unwrap_or_else(|e| e.into_inner()).note(meta);
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let listed = self.inner.list_with_delimiter(prefix).await?;
        let mut state = self.state();
        for meta in &listed.objects {
            state.note(meta);
        }
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    /// Counts the reads that reach the store.
    #[derive(Debug)]
    struct Counting {
        inner: InMemory,
        gets: std::sync::atomic::AtomicUsize,
    }

    impl fmt::Display for Counting {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Counting")
        }
    }

    #[async_trait]
    impl ObjectStore for Counting {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            if !o.head {
                self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            self.inner.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(l)
        }
        fn list(&self, p: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.inner.list(p)
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
            self.inner.copy_opts(f, t, o).await
        }
    }

    fn gets(c: &Counting) -> usize {
        c.gets.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn ranges_come_from_the_cache_until_a_listing_shows_a_new_version() {
        let counting = Arc::new(Counting {
            inner: InMemory::new(),
            gets: Default::default(),
        });
        let store = CachedStore::new(counting.clone(), 1 << 20);
        let path = Path::from("d/part-0.parquet");
        store
            .put(&path, Bytes::from_static(b"0123456789").into())
            .await
            .unwrap();

        // Unlisted: read through, nothing cached.
        assert_eq!(store.get_range(&path, 2..5).await.unwrap(), "234");
        assert_eq!(gets(&counting), 1);

        let _: Vec<_> = store
            .list(Some(&Path::from("d")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(store.get_range(&path, 2..5).await.unwrap(), "234");
        assert_eq!(
            store.get_ranges(&path, &[0..2, 2..5]).await.unwrap(),
            vec!["01", "234"]
        );
        let suffix = || async {
            let options = GetOptions {
                range: Some(GetRange::Suffix(3)),
                ..GetOptions::default()
            };
            let r = store.get_opts(&path, options).await.unwrap();
            assert_eq!(r.range, 7..10);
            r.bytes().await.unwrap()
        };
        assert_eq!(suffix().await, "789");
        let before = gets(&counting);
        assert_eq!(suffix().await, "789");
        assert_eq!(store.get_range(&path, 2..5).await.unwrap(), "234");
        assert_eq!(
            store.get_ranges(&path, &[0..2, 2..5]).await.unwrap(),
            vec!["01", "234"]
        );
        assert_eq!(gets(&counting), before, "served from the cache");

        // Replaced: the old version is served until a listing shows the new one (the next
        // statement's), then never again.
        store
            .put(&path, Bytes::from_static(b"abcdefghij").into())
            .await
            .unwrap();
        let _: Vec<_> = store
            .list(Some(&Path::from("d")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(store.get_range(&path, 2..5).await.unwrap(), "cde");
        assert!(gets(&counting) > before);
    }

    #[tokio::test]
    async fn objects_with_weak_etags_are_read_through() {
        // Review 29: a weak ETag says nothing of the bytes, and a server comparing If-Match
        // strongly fails every read asked with one.
        let counting = Arc::new(Counting {
            inner: InMemory::new(),
            gets: Default::default(),
        });
        let store = CachedStore::new(counting.clone(), 1 << 20);
        let path = Path::from("w.parquet");
        store
            .put(&path, Bytes::from_static(b"0123456789").into())
            .await
            .unwrap();
        let mut meta = store.head(&path).await.unwrap();
        meta.e_tag = Some("W/\"5-abc\"".into());
        store.state().note(&meta);
        for _ in 0..2 {
            assert_eq!(store.get_range(&path, 2..5).await.unwrap(), "234");
        }
        assert_eq!(gets(&counting), 2, "not cached");
    }

    #[tokio::test]
    async fn a_version_replaced_after_its_listing_fails_the_read_instead_of_mixing() {
        let store = CachedStore::new(Arc::new(InMemory::new()), 1 << 20);
        let path = Path::from("t.parquet");
        store
            .put(&path, Bytes::from_static(b"0123456789").into())
            .await
            .unwrap();
        store.head(&path).await.unwrap();
        store
            .put(&path, Bytes::from_static(b"abcdefghij").into())
            .await
            .unwrap();
        let err = store.get_range(&path, 0..4).await.unwrap_err();
        assert!(
            matches!(err, object_store::Error::Precondition { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn the_least_recently_used_ranges_leave_first_within_capacity() {
        let mut s = State::default();
        let key = |i: u64| (Path::from("p"), "e".to_string(), i, i + 10);
        for i in 0..4 {
            s.insert(key(i), Bytes::from(vec![0u8; 30]), 120);
        }
        assert!(s.get(&key(0)).is_some());
        s.insert(key(9), Bytes::from(vec![0u8; 30]), 120);
        assert!(s.bytes <= 120);
        assert!(s.get(&key(1)).is_none(), "oldest unused out");
        assert!(s.get(&key(0)).is_some(), "recently used kept");
        // Larger than a quarter of the capacity: never cached.
        s.insert(key(20), Bytes::from(vec![0u8; 31]), 120);
        assert!(s.get(&key(20)).is_none());
    }
}
