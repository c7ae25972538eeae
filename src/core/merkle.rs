//! Merkle tree of RFC 9162 shape: incremental append, roots at any size,
//! inclusion and consistency proofs, and their verifiers.
//!
//! Owns: [`NodeId`] (the address of a perfect subtree), [`CompactRange`] (the
//! O(log n) frontier used to append), the [`NodeReader`] trait through which
//! proof generation reads stored hashes, and the two verifiers.
//!
//! Invariants:
//! - Generic over [`TreeHasher`]; nothing here knows BLAKE3 from SHA-256.
//! - No I/O: stored hashes come through [`NodeReader`], so the embedded store,
//!   the PostgreSQL store and the in-memory [`MemoryTree`] share this code.
//! - Proof generation reads only *perfect* subtrees (`NodeId`s that are
//!   complete at the requested size), so a store never needs to keep
//!   right-edge (ephemeral) nodes: they are recomputed, O(log n) reads each.
//! - Verifiers check proof lengths exactly before hashing: a proof with a
//!   hash too many or too few is rejected with the expected length.

use std::marker::PhantomData;

use super::hash::{Hash, TreeHasher};

/// A perfect subtree: `2^level` leaves starting at leaf `index << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves; leaves are level 0.
    pub level: u8,
    /// Position among the nodes of this level, from the left.
    pub index: u64,
}

impl NodeId {
    /// The leaf at `index`.
    pub fn leaf(index: u64) -> NodeId {
        NodeId { level: 0, index }
    }

    /// First leaf covered.
    pub fn first_leaf(self) -> u64 {
        self.index << self.level
    }

    /// One past the last leaf covered (saturating at `u64::MAX`).
    pub fn end_leaf(self) -> u64 {
        (self.index + 1).saturating_mul(1u64 << self.level)
    }
}

/// Why a stored hash could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tree node level {} index {} unavailable: {reason}", id.level, id.index)]
pub struct NodeReadError {
    /// The node asked for.
    pub id: NodeId,
    /// What the store said.
    pub reason: String,
}

/// Read access to the hashes of perfect subtrees of a tree.
///
/// Implementations must return, for every `NodeId` whose leaves all lie below
/// the tree's current size, the RFC 9162 hash of that subtree.
pub trait NodeReader {
    /// The hash of a complete subtree.
    ///
    /// # Errors
    /// When the store cannot produce the node (missing, I/O failure).
    fn node(&self, id: NodeId) -> Result<Hash, NodeReadError>;
}

/// Errors of proof generation and of tree queries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// A leaf index at or beyond the tree size.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The tree size it was asked against.
        size: u64,
    },
    /// A size larger than the tree, or sizes in the wrong order.
    #[error("tree size {requested} is not available (tree has {available} leaves)")]
    SizeOutOfRange {
        /// The size asked for.
        requested: u64,
        /// The size the tree has (or the upper size of the proof).
        available: u64,
    },
    /// Consistency with the empty tree proves nothing and is refused.
    #[error("a consistency proof from the empty tree proves nothing")]
    EmptyFrom,
    /// The store failed to provide a node.
    #[error(transparent)]
    Node(#[from] NodeReadError),
}

/// Errors of proof verification. Every variant means "not proven".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// Leaf index not below the tree size.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// Claimed index.
        index: u64,
        /// Claimed tree size.
        size: u64,
    },
    /// The proof does not have the number of hashes the sizes require.
    #[error("proof has {got} hashes, expected {expected}")]
    WrongLength {
        /// Hashes required by the sizes.
        expected: usize,
        /// Hashes given.
        got: usize,
    },
    /// The proof recomputes to another root than the one claimed.
    #[error("proof leads to root {computed}, expected {expected}")]
    RootMismatch {
        /// Root the proof recomputes.
        computed: Hash,
        /// Root that was claimed (signed).
        expected: Hash,
    },
    /// `size1 > size2` in a consistency proof.
    #[error("consistency from size {size1} to smaller size {size2}")]
    SizesOutOfOrder {
        /// Older size.
        size1: u64,
        /// Newer size.
        size2: u64,
    },
    /// Consistency with the empty tree proves nothing and is refused.
    #[error("a consistency proof from the empty tree proves nothing")]
    EmptyFrom,
    /// A proof element that is not a 32-byte hash.
    #[error("proof element {position} is {len} bytes, not 32")]
    MalformedElement {
        /// Position in the proof.
        position: usize,
        /// Its length.
        len: usize,
    },
}

/// Parses proof elements as they travel (gRPC `repeated bytes`, JSON).
///
/// # Errors
/// [`ProofError::MalformedElement`] for the first element that is not 32 bytes.
pub fn proof_from_bytes<B: AsRef<[u8]>>(elements: &[B]) -> Result<Vec<Hash>, ProofError> {
    elements
        .iter()
        .enumerate()
        .map(|(position, e)| {
            Hash::from_slice(e.as_ref()).map_err(|_| ProofError::MalformedElement {
                position,
                len: e.as_ref().len(),
            })
        })
        .collect()
}

/// The frontier of a tree: hashes of the perfect subtrees that make up its
/// leaves, left to right, one per set bit of the size (largest first).
///
/// Appending a leaf is O(log n) and reports every node it completes, so a
/// store can persist exactly the perfect nodes proofs will need.
#[derive(Clone, PartialEq, Eq)]
pub struct CompactRange<H> {
    size: u64,
    hashes: Vec<Hash>,
    _hasher: PhantomData<H>,
}

impl<H> std::fmt::Debug for CompactRange<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactRange")
            .field("size", &self.size)
            .field("hashes", &self.hashes)
            .finish()
    }
}

impl<H: TreeHasher> Default for CompactRange<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: TreeHasher> CompactRange<H> {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        CompactRange {
            size: 0,
            hashes: Vec::new(),
            _hasher: PhantomData,
        }
    }

    /// Rebuilds a frontier from its parts.
    ///
    /// Returns `None` unless `hashes` has one hash per set bit of `size`.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Option<Self> {
        (hashes.len() == size.count_ones() as usize).then_some(CompactRange {
            size,
            hashes,
            _hasher: PhantomData,
        })
    }

    /// Reads the frontier of a tree of `size` leaves from stored nodes.
    ///
    /// # Errors
    /// When a node cannot be read.
    pub fn from_reader(reader: &impl NodeReader, size: u64) -> Result<Self, NodeReadError> {
        let hashes = perfect_decomposition(0, size)
            .map(|id| reader.node(id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompactRange {
            size,
            hashes,
            _hasher: PhantomData,
        })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree hashes, largest (leftmost) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends a leaf hash. `visit` is called with the leaf itself (level 0)
    /// and then with every perfect node the append completes, bottom-up.
    pub fn append(&mut self, leaf: Hash, mut visit: impl FnMut(NodeId, Hash)) {
        let index = self.size;
        let mut id = NodeId::leaf(index);
        let mut hash = leaf;
        visit(id, hash);
        // One merge per trailing one bit of the old size.
        let mut bits = index;
        while bits & 1 == 1 {
            // Invariant: a set bit of the old size has a hash on the stack.
            let left = self.hashes.pop().expect("frontier has a hash per set bit");
            hash = H::hash_children(&left, &hash);
            id = NodeId {
                level: id.level + 1,
                index: id.index >> 1,
            };
            visit(id, hash);
            bits >>= 1;
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// The root of the tree (RFC 9162 MTH); `H("")` when empty.
    pub fn root(&self) -> Hash {
        fold_right::<H>(&self.hashes)
    }
}

/// Hash of a list of subtree roots of decreasing size, folded from the right.
fn fold_right<H: TreeHasher>(hashes: &[Hash]) -> Hash {
    let mut iter = hashes.iter().rev();
    match iter.next() {
        None => H::empty_root(),
        Some(last) => iter.fold(*last, |acc, h| H::hash_children(h, &acc)),
    }
}

/// The perfect subtrees that make up leaves `[lo, hi)`, left to right, where
/// `lo` is aligned so that each is as large as possible (decreasing sizes).
fn perfect_decomposition(lo: u64, hi: u64) -> impl Iterator<Item = NodeId> {
    let mut at = lo;
    std::iter::from_fn(move || {
        if at >= hi {
            return None;
        }
        let remaining = hi - at;
        let align = if at == 0 { 63 } else { at.trailing_zeros() };
        let fit = 63 - remaining.leading_zeros();
        let level = align.min(fit);
        let id = NodeId {
            level: level as u8,
            index: at >> level,
        };
        at += 1u64 << level;
        Some(id)
    })
}

/// RFC 9162 `MTH(D[lo:hi])` for a range whose start is aligned to a power of
/// two at least `hi - lo` (every range a proof asks for is).
fn range_hash<H: TreeHasher>(
    reader: &impl NodeReader,
    lo: u64,
    hi: u64,
) -> Result<Hash, NodeReadError> {
    debug_assert!(lo == 0 || (hi - lo) <= 1u64 << lo.trailing_zeros());
    let nodes = perfect_decomposition(lo, hi)
        .map(|id| reader.node(id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(fold_right::<H>(&nodes))
}

/// Computes `MTH(D[lo:hi])` ranges for proofs, remembering the non-perfect
/// (right-edge) ones: every proof at one tree size shares the same few right
/// edges, so proving many leaves at one size hashes each edge once. It also
/// remembers the last perfect node read at each position of a proof: the
/// proofs of neighbouring leaves share every element above the one where
/// their paths part, so proving a run of `k` leaves reads about `2k` nodes,
/// not `k` times the tree's height. (By position, not by level: the path of
/// a leaf in an unbalanced tree can meet two siblings of one height.)
struct Ranges<'a, R, H> {
    reader: &'a R,
    memo: Vec<(u64, u64, Hash)>,
    /// Per position in a proof, the last perfect node read there.
    last: [Option<(NodeId, Hash)>; 64],
    _hasher: PhantomData<H>,
}

impl<'a, R: NodeReader, H: TreeHasher> Ranges<'a, R, H> {
    fn new(reader: &'a R) -> Self {
        Ranges {
            reader,
            memo: Vec::new(),
            last: [None; 64],
            _hasher: PhantomData,
        }
    }

    /// `MTH(D[lo:hi])`, element `position` of a proof.
    fn hash(&mut self, lo: u64, hi: u64, position: usize) -> Result<Hash, NodeReadError> {
        let n = hi - lo;
        if n.is_power_of_two() {
            // Aligned (see range_hash): one perfect node.
            let id = NodeId {
                level: n.trailing_zeros() as u8,
                index: lo >> n.trailing_zeros(),
            };
            let last = &mut self.last[position];
            if let Some((at, h)) = *last {
                if at == id {
                    return Ok(h);
                }
            }
            let h = self.reader.node(id)?;
            *last = Some((id, h));
            return Ok(h);
        }
        if let Some((_, _, h)) = self.memo.iter().find(|(a, b, _)| *a == lo && *b == hi) {
            return Ok(*h);
        }
        let h = range_hash::<H>(self.reader, lo, hi)?;
        self.memo.push((lo, hi, h));
        Ok(h)
    }
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Root of the tree made of the first `size` leaves.
///
/// # Errors
/// When a node cannot be read.
pub fn root_at<H: TreeHasher>(reader: &impl NodeReader, size: u64) -> Result<Hash, TreeError> {
    Ok(range_hash::<H>(reader, 0, size)?)
}

/// Inclusion proof (RFC 9162 §2.1.3.1) of leaf `index` in the tree of the
/// first `size` leaves, ordered from the leaf up.
///
/// # Errors
/// When `index >= size` or a node cannot be read.
pub fn inclusion_proof<H: TreeHasher>(
    reader: &impl NodeReader,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError> {
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    let mut ranges = Ranges::<_, H>::new(reader);
    let mut proof = Vec::with_capacity(max_path_len(size));
    inclusion_path(&mut ranges, index, 0, size, &mut proof)?;
    Ok(proof)
}

/// Inclusion proofs of several leaves in the tree of `size` leaves; the
/// right-edge hashes they share are computed once.
///
/// # Errors
/// When an index is not below `size` or a node cannot be read.
pub fn inclusion_proofs<H: TreeHasher>(
    reader: &impl NodeReader,
    indices: impl IntoIterator<Item = u64>,
    size: u64,
) -> Result<Vec<Vec<Hash>>, TreeError> {
    let mut ranges = Ranges::<_, H>::new(reader);
    indices
        .into_iter()
        .map(|index| {
            if index >= size {
                return Err(TreeError::IndexOutOfRange { index, size });
            }
            let mut proof = Vec::with_capacity(max_path_len(size));
            inclusion_path(&mut ranges, index, 0, size, &mut proof)?;
            Ok(proof)
        })
        .collect()
}

/// The most hashes an inclusion path in a tree of `size` leaves holds:
/// the tree's height, ceil(log2(size)). (Sizing each proof by it, not by
/// the 64 levels a tree can have, cut the 256 proofs of a batch from
/// 2 KiB of allocation each to a few hundred bytes.)
fn max_path_len(size: u64) -> usize {
    if size <= 1 {
        0
    } else {
        (u64::BITS - (size - 1).leading_zeros()) as usize
    }
}

fn inclusion_path<R: NodeReader, H: TreeHasher>(
    ranges: &mut Ranges<'_, R, H>,
    m: u64,
    lo: u64,
    hi: u64,
    out: &mut Vec<Hash>,
) -> Result<(), NodeReadError> {
    if hi - lo == 1 {
        return Ok(());
    }
    let k = split_point(hi - lo);
    if m < lo + k {
        inclusion_path(ranges, m, lo, lo + k, out)?;
        out.push(ranges.hash(lo + k, hi, out.len())?);
    } else {
        inclusion_path(ranges, m, lo + k, hi, out)?;
        out.push(ranges.hash(lo, lo + k, out.len())?);
    }
    Ok(())
}

/// Consistency proof (RFC 9162 §2.1.4.1) that the tree of `size1` leaves is a
/// prefix of the tree of `size2` leaves. Empty when the sizes are equal.
///
/// # Errors
/// When `size1` is 0 or greater than `size2`, or a node cannot be read.
pub fn consistency_proof<H: TreeHasher>(
    reader: &impl NodeReader,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, TreeError> {
    if size1 > size2 {
        return Err(TreeError::SizeOutOfRange {
            requested: size1,
            available: size2,
        });
    }
    if size1 == 0 {
        return Err(TreeError::EmptyFrom);
    }
    let mut proof = Vec::with_capacity(64);
    if size1 < size2 {
        subproof::<H>(reader, size1, 0, size2, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof<H: TreeHasher>(
    reader: &impl NodeReader,
    m: u64,
    lo: u64,
    hi: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), NodeReadError> {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push(range_hash::<H>(reader, lo, hi)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof::<H>(reader, m, lo, lo + k, whole, out)?;
        out.push(range_hash::<H>(reader, lo + k, hi)?);
    } else {
        subproof::<H>(reader, m - k, lo + k, hi, false, out)?;
        out.push(range_hash::<H>(reader, lo, lo + k)?);
    }
    Ok(())
}

/// How many proof hashes sit below the point where the paths of leaves
/// `index` and `size - 1` join (`inner`), and how many above it (`border`).
fn decompose_inclusion(index: u64, size: u64) -> (usize, usize) {
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = shr(index, inner).count_ones() as usize;
    (inner, border)
}

/// `(inner, border)` of an inclusion proof of leaf `index` in a tree of
/// `size`, after checking the index is in the tree and the proof has that
/// many hashes.
fn inclusion_shape(index: u64, size: u64, len: usize) -> Result<(usize, usize), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (inner, border) = decompose_inclusion(index, size);
    if len != inner + border {
        return Err(ProofError::WrongLength {
            expected: inner + border,
            got: len,
        });
    }
    Ok((inner, border))
}

/// `x >> by`, 0 when `by` is 64 or more (a tree of 2^63+ leaves has 64
/// levels; `>>` by 64 would overflow).
fn shr(x: u64, by: usize) -> u64 {
    u32::try_from(by)
        .ok()
        .and_then(|b| x.checked_shr(b))
        .unwrap_or(0)
}

fn chain_inner<H: TreeHasher>(seed: Hash, proof: &[Hash], index: u64) -> Hash {
    proof.iter().enumerate().fold(seed, |acc, (i, h)| {
        if (index >> i) & 1 == 0 {
            H::hash_children(&acc, h)
        } else {
            H::hash_children(h, &acc)
        }
    })
}

fn chain_inner_right<H: TreeHasher>(seed: Hash, proof: &[Hash], index: u64) -> Hash {
    proof.iter().enumerate().fold(seed, |acc, (i, h)| {
        if (index >> i) & 1 == 1 {
            H::hash_children(h, &acc)
        } else {
            acc
        }
    })
}

fn chain_border_right<H: TreeHasher>(seed: Hash, proof: &[Hash]) -> Hash {
    proof.iter().fold(seed, |acc, h| H::hash_children(h, &acc))
}

/// Recomputes the root a leaf's inclusion proof leads to.
///
/// # Errors
/// When the index is outside the tree or the proof has the wrong length.
pub fn root_from_inclusion_proof<H: TreeHasher>(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    let (inner, _) = inclusion_shape(index, size, proof.len())?;
    let acc = chain_inner::<H>(*leaf, &proof[..inner], index);
    Ok(chain_border_right::<H>(acc, &proof[inner..]))
}

/// Verifies that `leaf` is leaf `index` of the tree of `size` leaves whose
/// root is `root`.
///
/// # Errors
/// Any [`ProofError`]: the inclusion is not proven.
pub fn verify_inclusion<H: TreeHasher>(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof::<H>(index, size, leaf, proof)?;
    if &computed != root {
        return Err(ProofError::RootMismatch {
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// Verifies many inclusion proofs against one tree (size and root),
/// remembering the path of the last proof that verified: leaves close to
/// each other share most of their path, so a proof after the first costs
/// the hashes below the point where its path meets the remembered one
/// (about one for consecutive leaves, instead of log n) plus a comparison
/// of the rest of the proof with the remembered siblings.
///
/// Exactly as strict as [`verify_inclusion`]: a hash is skipped only when
/// both of its inputs equal nodes of a path already verified against the
/// root, at the same positions, so its output is that path's node.
pub struct InclusionVerifier<H: TreeHasher> {
    size: u64,
    root: Hash,
    /// The last verified path.
    last: Option<VerifiedPath>,
    _hasher: std::marker::PhantomData<H>,
}

/// A path verified against the root: its inner levels, the node at each
/// inner level `0..=inner` (index at that level, hash), and its proof.
struct VerifiedPath {
    inner: usize,
    nodes: Vec<(u64, Hash)>,
    proof: Vec<Hash>,
}

impl<H: TreeHasher> InclusionVerifier<H> {
    /// A verifier for the tree of `size` leaves with root `root`.
    #[must_use]
    pub fn new(size: u64, root: Hash) -> InclusionVerifier<H> {
        InclusionVerifier {
            size,
            root,
            last: None,
            _hasher: std::marker::PhantomData,
        }
    }

    /// Verifies that `leaf` is leaf `index` of the tree.
    ///
    /// # Errors
    /// Any [`ProofError`], as [`verify_inclusion`].
    pub fn verify(&mut self, index: u64, leaf: &Hash, proof: &[Hash]) -> Result<(), ProofError> {
        let (inner, _) = inclusion_shape(index, self.size, proof.len())?;
        let mut nodes = Vec::with_capacity(inner + 1);
        let mut acc = *leaf;
        let mut level = 0;
        let mut known = false;
        if let Some(VerifiedPath {
            inner: last_inner,
            nodes: last_nodes,
            proof: last_proof,
        }) = &self.last
        {
            if *last_inner == inner {
                while level < inner {
                    let at = shr(index, level);
                    let (last_at, last_hash) = last_nodes[level];
                    if at == last_at && acc == last_hash {
                        // On the verified path from here: the rest of the
                        // proof must be the verified path's.
                        known = proof[level..] == last_proof[level..];
                        break;
                    }
                    nodes.push((at, acc));
                    acc = if at ^ 1 == last_at
                        && acc == last_proof[level]
                        && proof[level] == last_hash
                    {
                        // The sibling of a verified node, and that node:
                        // their parent is the verified path's next node.
                        last_nodes[level + 1].1
                    } else if at & 1 == 0 {
                        H::hash_children(&acc, &proof[level])
                    } else {
                        H::hash_children(&proof[level], &acc)
                    };
                    level += 1;
                }
                if !known && level == inner {
                    known = acc == last_nodes[inner].1 && proof[inner..] == last_proof[inner..];
                }
            }
        }
        if known {
            nodes.extend((level..=inner).map(|l| (shr(index, l), self.last_node(l))));
        } else {
            // Hash the rest of the way, then check the root.
            while level < inner {
                nodes.push((shr(index, level), acc));
                acc = if shr(index, level) & 1 == 0 {
                    H::hash_children(&acc, &proof[level])
                } else {
                    H::hash_children(&proof[level], &acc)
                };
                level += 1;
            }
            nodes.push((shr(index, inner), acc));
            let computed = chain_border_right::<H>(acc, &proof[inner..]);
            if computed != self.root {
                return Err(ProofError::RootMismatch {
                    computed,
                    expected: self.root,
                });
            }
        }
        self.last = Some(VerifiedPath {
            inner,
            nodes,
            proof: proof.to_vec(),
        });
        Ok(())
    }

    fn last_node(&self, level: usize) -> Hash {
        self.last.as_ref().map_or(Hash::ZERO, |l| l.nodes[level].1)
    }
}

/// Verifies that the tree of `size1` leaves with root `root1` is a prefix of
/// the tree of `size2` leaves with root `root2`.
///
/// # Errors
/// Any [`ProofError`]: consistency is not proven. `size1 == 0` is refused.
pub fn verify_consistency<H: TreeHasher>(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::SizesOutOfOrder { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyFrom);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                expected: 0,
                got: proof.len(),
            });
        }
        if root1 != root2 {
            return Err(ProofError::RootMismatch {
                computed: *root1,
                expected: *root2,
            });
        }
        return Ok(());
    }
    let (inner, border) = decompose_inclusion(size1 - 1, size2);
    let shift = size1.trailing_zeros() as usize;
    // size1 < size2 guarantees the paths of size1-1 and size2-1 join above
    // the perfect subtree of 2^shift leaves that ends the smaller tree.
    let inner = inner - shift;
    // When size1 is itself a power of two, the smaller tree is that subtree
    // and its root is root1; otherwise the proof starts with its hash.
    let (seed, start) = if size1 == 1u64 << shift {
        (*root1, 0)
    } else {
        match proof.first() {
            Some(h) => (*h, 1),
            None => {
                return Err(ProofError::WrongLength {
                    expected: 1 + inner + border,
                    got: 0,
                })
            }
        }
    };
    let expected = start + inner + border;
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let rest = &proof[start..];
    let mask = (size1 - 1) >> shift;

    let hash1 = chain_inner_right::<H>(seed, &rest[..inner], mask);
    let hash1 = chain_border_right::<H>(hash1, &rest[inner..]);
    if &hash1 != root1 {
        return Err(ProofError::RootMismatch {
            computed: hash1,
            expected: *root1,
        });
    }
    let hash2 = chain_inner::<H>(seed, &rest[..inner], mask);
    let hash2 = chain_border_right::<H>(hash2, &rest[inner..]);
    if &hash2 != root2 {
        return Err(ProofError::RootMismatch {
            computed: hash2,
            expected: *root2,
        });
    }
    Ok(())
}

/// A whole tree in memory: every perfect node, level by level.
///
/// Used by the offline verifier (to recompute segment roots), by tests, and
/// as the reference the stores are checked against.
#[derive(Clone)]
pub struct MemoryTree<H> {
    levels: Vec<Vec<Hash>>,
    frontier: CompactRange<H>,
}

impl<H: TreeHasher> Default for MemoryTree<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: TreeHasher> MemoryTree<H> {
    /// The empty tree.
    pub fn new() -> Self {
        MemoryTree {
            levels: Vec::new(),
            frontier: CompactRange::new(),
        }
    }

    /// Appends a leaf hash (already `H(0x00 || data)`).
    pub fn push(&mut self, leaf: Hash) {
        let levels = &mut self.levels;
        self.frontier.append(leaf, |id, hash| {
            let level = id.level as usize;
            if levels.len() <= level {
                levels.resize_with(level + 1, Vec::new);
            }
            debug_assert_eq!(levels[level].len() as u64, id.index);
            levels[level].push(hash);
        });
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Current root.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The frontier at the current size.
    pub fn frontier(&self) -> &CompactRange<H> {
        &self.frontier
    }
}

impl<H: TreeHasher> NodeReader for MemoryTree<H> {
    fn node(&self, id: NodeId) -> Result<Hash, NodeReadError> {
        self.levels
            .get(id.level as usize)
            .and_then(|l| l.get(id.index as usize))
            .copied()
            .ok_or_else(|| NodeReadError {
                id,
                reason: "not in tree".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hash::{Blake3, Sha256};

    /// RFC 9162 MTH written straight from the definition, as the reference.
    fn reference_root<H: TreeHasher>(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => H::empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                H::hash_children(
                    &reference_root::<H>(&leaves[..k]),
                    &reference_root::<H>(&leaves[k..]),
                )
            }
        }
    }

    fn leaves<H: TreeHasher>(n: u64) -> Vec<Hash> {
        (0..n).map(|i| H::hash_leaf(&i.to_be_bytes())).collect()
    }

    #[test]
    fn roots_match_the_definition_at_every_size() {
        let all = leaves::<Blake3>(130);
        let mut tree = MemoryTree::<Blake3>::new();
        for n in 0..=all.len() {
            assert_eq!(tree.root(), reference_root::<Blake3>(&all[..n]), "size {n}");
            for m in 0..=n as u64 {
                assert_eq!(
                    root_at::<Blake3>(&tree, m).unwrap(),
                    reference_root::<Blake3>(&all[..m as usize]),
                    "root at {m} of {n}"
                );
            }
            if n < all.len() {
                tree.push(all[n]);
            }
        }
    }

    #[test]
    fn known_sha256_root_of_eight_leaves() {
        // RFC 6962 reference leaves (transparency-dev/merkle testdata).
        let data = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        let mut tree = MemoryTree::<Sha256>::new();
        for d in data {
            tree.push(Sha256::hash_leaf(&hex::decode(d).unwrap()));
        }
        assert_eq!(
            tree.root().to_hex(),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
    }

    #[test]
    fn append_visits_exactly_the_completed_nodes() {
        let mut range = CompactRange::<Blake3>::new();
        let mut seen = Vec::new();
        for leaf in leaves::<Blake3>(8) {
            range.append(leaf, |id, _| seen.push((id.level, id.index)));
        }
        assert_eq!(
            seen,
            vec![
                (0, 0),
                (0, 1),
                (1, 0),
                (0, 2),
                (0, 3),
                (1, 1),
                (2, 0),
                (0, 4),
                (0, 5),
                (1, 2),
                (0, 6),
                (0, 7),
                (1, 3),
                (2, 1),
                (3, 0)
            ]
        );
    }

    #[test]
    fn frontier_rebuilt_from_reader_equals_live_frontier() {
        let mut tree = MemoryTree::<Blake3>::new();
        for (i, leaf) in leaves::<Blake3>(77).into_iter().enumerate() {
            tree.push(leaf);
            let rebuilt = CompactRange::<Blake3>::from_reader(&tree, i as u64 + 1).unwrap();
            assert_eq!(&rebuilt, tree.frontier());
        }
        assert!(CompactRange::<Blake3>::from_parts(3, vec![Hash::ZERO]).is_none());
    }

    #[test]
    fn proofs_of_every_leaf_at_every_size_verify() {
        let all = leaves::<Sha256>(40);
        let mut tree = MemoryTree::<Sha256>::new();
        for l in &all {
            tree.push(*l);
        }
        for size in 1..=40u64 {
            let root = root_at::<Sha256>(&tree, size).unwrap();
            for index in 0..size {
                let proof = inclusion_proof::<Sha256>(&tree, index, size).unwrap();
                verify_inclusion::<Sha256>(index, size, &all[index as usize], &proof, &root)
                    .unwrap();
            }
            for size1 in 1..=size {
                let root1 = root_at::<Sha256>(&tree, size1).unwrap();
                let proof = consistency_proof::<Sha256>(&tree, size1, size).unwrap();
                verify_consistency::<Sha256>(size1, size, &proof, &root1, &root).unwrap();
            }
        }
    }

    #[test]
    fn proofs_are_sized_by_the_trees_height_exactly() {
        let mut tree = MemoryTree::<Blake3>::new();
        for l in leaves::<Blake3>(300) {
            tree.push(l);
        }
        assert_eq!(max_path_len(0), 0);
        assert_eq!(max_path_len(u64::MAX), 64);
        for size in 1..=300u64 {
            let proofs = inclusion_proofs::<Blake3>(&tree, 0..size, size).unwrap();
            let longest = proofs.iter().map(Vec::len).max().unwrap();
            // The bound is the longest path: never short (a proof would
            // grow its buffer), never more than that.
            assert_eq!(longest, max_path_len(size), "size {size}");
            assert!(proofs.iter().all(|p| p.capacity() == max_path_len(size)));
        }
    }

    #[test]
    fn batched_proofs_equal_single_proofs() {
        let mut tree = MemoryTree::<Blake3>::new();
        for l in leaves::<Blake3>(77) {
            tree.push(l);
        }
        for size in [1u64, 2, 5, 64, 77] {
            let batch = inclusion_proofs::<Blake3>(&tree, 0..size, size).unwrap();
            for (i, p) in batch.iter().enumerate() {
                assert_eq!(
                    p,
                    &inclusion_proof::<Blake3>(&tree, i as u64, size).unwrap()
                );
            }
        }
        assert!(inclusion_proofs::<Blake3>(&tree, [3, 80], 77).is_err());
        // In any order, repeats included (a batch's duplicates name older
        // seqs between its new ones).
        let order = [76u64, 3, 3, 40, 75, 0, 76, 41, 2, 64, 63, 1];
        let batch = inclusion_proofs::<Blake3>(&tree, order, 77).unwrap();
        for (&i, p) in order.iter().zip(&batch) {
            assert_eq!(p, &inclusion_proof::<Blake3>(&tree, i, 77).unwrap());
        }
    }

    /// Counts the nodes read through it, and the distinct ones.
    struct Counting<'a> {
        tree: &'a MemoryTree<Blake3>,
        reads: std::cell::Cell<usize>,
        distinct: std::cell::RefCell<std::collections::HashSet<NodeId>>,
    }

    impl NodeReader for Counting<'_> {
        fn node(&self, id: NodeId) -> Result<Hash, NodeReadError> {
            self.reads.set(self.reads.get() + 1);
            self.distinct.borrow_mut().insert(id);
            self.tree.node(id)
        }
    }

    #[test]
    fn batched_proofs_of_neighbours_read_each_shared_sibling_once() {
        let mut tree = MemoryTree::<Blake3>::new();
        for l in leaves::<Blake3>(5000) {
            tree.push(l);
        }
        // The newest 256 leaves, as a batch's receipts ask for them, in a
        // tree whose right edge has two siblings of one height on a path.
        let reader = Counting {
            tree: &tree,
            reads: std::cell::Cell::new(0),
            distinct: Default::default(),
        };
        let batch = inclusion_proofs::<Blake3>(&reader, 4744..5000, 5000).unwrap();
        let elements: usize = batch.iter().map(Vec::len).sum();
        let (reads, distinct) = (reader.reads.get(), reader.distinct.borrow().len());
        // 2,784 proof elements from 513 distinct nodes; the 5 extra reads
        // are the right edge's, hashed once into the memo.
        assert_eq!((elements, distinct), (2784, 513));
        assert!(reads <= distinct + 8, "{reads} reads of {distinct} nodes");
    }

    #[test]
    fn proof_generation_refuses_bad_arguments() {
        let mut tree = MemoryTree::<Blake3>::new();
        for l in leaves::<Blake3>(5) {
            tree.push(l);
        }
        assert_eq!(
            inclusion_proof::<Blake3>(&tree, 5, 5),
            Err(TreeError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            consistency_proof::<Blake3>(&tree, 0, 5),
            Err(TreeError::EmptyFrom)
        );
        assert!(matches!(
            consistency_proof::<Blake3>(&tree, 4, 3),
            Err(TreeError::SizeOutOfRange { .. })
        ));
        assert!(matches!(
            inclusion_proof::<Blake3>(&tree, 1, 6),
            Err(TreeError::Node(_))
        ));
    }

    #[test]
    fn proof_from_bytes_names_the_bad_element() {
        let ok = [vec![1u8; 32], vec![2u8; 32]];
        assert_eq!(proof_from_bytes(&ok).unwrap().len(), 2);
        let bad = [vec![1u8; 32], vec![2u8; 31]];
        assert_eq!(
            proof_from_bytes(&bad),
            Err(ProofError::MalformedElement {
                position: 1,
                len: 31
            })
        );
    }
}
