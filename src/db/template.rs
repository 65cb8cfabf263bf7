//! Statements of the per-answer path (the hold, the turn's rows, the settlement) keep their
//! SQL: it depends only on the statement's shape and the backend, so sea-query builds it
//! once per backend and every answer after that only binds its own values. Building SQL
//! with sea-query costs dozens of small allocations and string formatting per statement —
//! ~6 % of the gateway's CPU at full load before, and tens of microseconds of a cold
//! request's time to first content.
//!
//! Each template keeps beside it the builder that defines it. Debug builds (every test,
//! on every backend) build each statement with its builder too and check that the template
//! with the statement's values gives exactly that: the same SQL, the same values in order.

use std::sync::OnceLock;

use sea_orm::{DbBackend, Statement, Value, Values};

/// The SQL of one statement shape, built once per backend.
#[derive(Default)]
pub struct Template {
    sql: [OnceLock<String>; 3],
}

impl Template {
    pub const fn new() -> Self {
        Self {
            sql: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
        }
    }

    /// The statement with `values`, in the order its builder puts them. `build` makes the
    /// statement (with any values) the first time this backend needs the SQL.
    pub fn bind(
        &self,
        backend: DbBackend,
        build: impl FnOnce() -> Statement,
        values: Vec<Value>,
    ) -> Statement {
        let built: Result<_, std::convert::Infallible> =
            self.try_bind(backend, |_| Ok(build()), values);
        match built {
            Ok(statement) => statement,
        }
    }

    /// [`Template::bind`] with a builder that can fail (nothing is kept then) and that is
    /// handed the values, for a builder that takes them as they are.
    pub fn try_bind<E>(
        &self,
        backend: DbBackend,
        build: impl FnOnce(&[Value]) -> Result<Statement, E>,
        values: Vec<Value>,
    ) -> Result<Statement, E> {
        let slot = match backend {
            DbBackend::Sqlite => &self.sql[0],
            DbBackend::Postgres => &self.sql[1],
            _ => &self.sql[2],
        };
        #[cfg(debug_assertions)]
        let (built, build) = {
            let built = build(&values)?;
            (built.clone(), |_: &[Value]| Ok::<_, E>(built))
        };
        let sql = match slot.get() {
            Some(sql) => sql.clone(),
            None => {
                let sql = build(&values)?.sql;
                // Two first uses at once build the same SQL: either may stay.
                let _ = slot.set(sql.clone());
                sql
            }
        };
        let statement = Statement {
            sql,
            values: Some(Values(values)),
            db_backend: backend,
        };
        #[cfg(debug_assertions)]
        assert_eq!(
            statement, built,
            "a statement template and its builder disagree"
        );
        Ok(statement)
    }
}

/// Every backend, for the tests that compare templates with their builders.
#[cfg(test)]
pub const BACKENDS: [DbBackend; 3] = [DbBackend::Sqlite, DbBackend::Postgres, DbBackend::MySql];

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{Expr, ExprTrait, Query};

    fn build(backend: DbBackend, id: &str, n: i64) -> Statement {
        let mut q = Query::select();
        q.expr(Expr::val(n))
            .from("t")
            .and_where(Expr::col("id").eq(id));
        backend.build(&q)
    }

    #[test]
    fn a_template_binds_new_values_to_the_sql_built_once_per_backend() {
        static T: Template = Template::new();
        let bind = |backend, id: &str, n: i64| {
            T.bind(backend, || build(backend, id, n), vec![n.into(), id.into()])
        };
        for backend in BACKENDS {
            assert_eq!(bind(backend, "a", 1), build(backend, "a", 1));
            assert_eq!(bind(backend, "b", 7), build(backend, "b", 7));
        }
        assert_ne!(
            bind(DbBackend::Postgres, "c", 2).sql,
            bind(DbBackend::MySql, "c", 2).sql
        );
    }

    #[test]
    #[should_panic(expected = "a statement template and its builder disagree")]
    fn values_out_of_the_builders_order_are_caught() {
        static T: Template = Template::new();
        T.bind(
            DbBackend::Sqlite,
            || build(DbBackend::Sqlite, "a", 1),
            vec!["a".into(), 1i64.into()],
        );
    }
}
