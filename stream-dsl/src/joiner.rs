//! The user's joiner of a two-sided join, by join kind, shared by the
//! table–table and stream–stream joins.

/// An inner join's joiner: both values present.
type InnerFn<A, B, R> = Box<dyn Fn(&A, &B) -> R + Send + Sync>;
/// A left join's joiner: the right value may be missing.
type LeftFn<A, B, R> = Box<dyn Fn(&A, Option<&B>) -> R + Send + Sync>;
/// An outer join's joiner: either value may be missing.
type OuterFn<A, B, R> = Box<dyn Fn(Option<&A>, Option<&B>) -> R + Send + Sync>;

/// A joiner and the rows its kind keeps. `apply` joins two sides' optional
/// values as the kind says: `None` when the kind has no row for them.
pub(crate) enum Joiner<A, B, R> {
    /// Both sides present.
    Inner(InnerFn<A, B, R>),
    /// The left side present.
    Left(LeftFn<A, B, R>),
    /// Either side present.
    Outer(OuterFn<A, B, R>),
}

impl<A, B, R> Joiner<A, B, R> {
    /// The joined value of `a` and `b`, if the kind has a row for them.
    pub(crate) fn apply(&self, a: Option<&A>, b: Option<&B>) -> Option<R> {
        match self {
            Joiner::Inner(f) => Some(f(a?, b?)),
            Joiner::Left(f) => Some(f(a?, b)),
            Joiner::Outer(f) => (a.is_some() || b.is_some()).then(|| f(a, b)),
        }
    }

    /// Whether a record of the left (`true`) or right side that found no
    /// partner has a row of its own.
    pub(crate) fn keeps_lone(&self, left: bool) -> bool {
        matches!(
            (self, left),
            (Joiner::Left(_), true) | (Joiner::Outer(_), _)
        )
    }

    /// The node kind, for a join of tables or (`streams`) of streams.
    pub(crate) fn kind(&self, streams: bool) -> &'static str {
        match (self, streams) {
            (Joiner::Inner(_), false) => "table-join",
            (Joiner::Left(_), false) => "table-left-join",
            (Joiner::Outer(_), false) => "table-outer-join",
            (Joiner::Inner(_), true) => "stream-join",
            (Joiner::Left(_), true) => "stream-left-join",
            (Joiner::Outer(_), true) => "stream-outer-join",
        }
    }
}
