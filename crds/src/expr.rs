//! SQL expressions of `filter` and `select` steps: one parser for the operator's validation
//! and the runtime's evaluation, so both agree on what a pipeline means.

use std::{collections::BTreeSet, ops::ControlFlow};

use sqlparser::{
    ast::{Expr, SelectItem as SqlSelectItem, visit_expressions},
    dialect::GenericDialect,
    parser::{Parser, ParserError},
    tokenizer::Token,
};

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// The text is not a SQL expression.
    #[error("not a valid SQL expression: {0}")]
    Syntax(String),
    /// A computed select item has no name.
    #[error("`{0}` needs a name: write `{0} AS name`")]
    MissingAlias(String),
    /// A select item names several outputs.
    #[error("`{0}`: an expression has one name")]
    MultipleAliases(String),
    /// `table.*` has no meaning on a stream of records.
    #[error("`{0}`: qualified wildcards are not supported; use `*`")]
    QualifiedWildcard(String),
}

impl From<ParserError> for ExprError {
    fn from(error: ParserError) -> Self {
        Self::Syntax(error.to_string())
    }
}

/// One item of a `select` step.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*`: every field of the input, as it is.
    Wildcard,
    /// An expression and the name of its output field.
    Named {
        /// The expression.
        expr: Box<Expr>,
        /// The output field name.
        name: String,
    },
}

/// Parses a boolean or scalar SQL expression, e.g. `amount > 0 AND currency = 'EUR'`.
pub fn parse_expr(text: &str) -> Result<Expr, ExprError> {
    let mut parser = Parser::new(&GenericDialect {}).try_with_sql(text)?;
    let expr = parser.parse_expr()?;
    expect_end(&parser)?;
    Ok(expr)
}

/// Parses a select item: `field`, `expr AS name` or `*`.
pub fn parse_select_item(text: &str) -> Result<SelectItem, ExprError> {
    let mut parser = Parser::new(&GenericDialect {}).try_with_sql(text)?;
    let item = parser.parse_select_item()?;
    expect_end(&parser)?;
    match item {
        SqlSelectItem::Wildcard(_) => Ok(SelectItem::Wildcard),
        SqlSelectItem::ExprWithAlias { expr, alias } => {
            Ok(SelectItem::Named { expr: Box::new(expr), name: alias.value })
        }
        SqlSelectItem::UnnamedExpr(expr) => match column_name(&expr) {
            Some(name) => Ok(SelectItem::Named { name, expr: Box::new(expr) }),
            None => Err(ExprError::MissingAlias(text.trim().to_owned())),
        },
        SqlSelectItem::ExprWithAliases { .. } => Err(ExprError::MultipleAliases(text.trim().to_owned())),
        SqlSelectItem::QualifiedWildcard(..) => Err(ExprError::QualifiedWildcard(text.trim().to_owned())),
    }
}

fn expect_end(parser: &Parser<'_>) -> Result<(), ExprError> {
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        token => Err(ExprError::Syntax(format!("unexpected `{token}` after the expression"))),
    }
}

/// The field a bare column reference names (`user_id`, `"user id"`, `payload.user_id`).
pub fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::CompoundIdentifier(parts) => Some(parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".")),
        Expr::Nested(inner) => column_name(inner),
        _ => None,
    }
}

/// Every field an expression reads, by its top-level name.
pub fn referenced_fields(expr: &Expr) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    let _ = visit_expressions(expr, |e| {
        match e {
            Expr::Identifier(ident) => {
                fields.insert(ident.value.clone());
            }
            Expr::CompoundIdentifier(parts) => {
                if let Some(first) = parts.first() {
                    fields.insert(first.value.clone());
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: BTreeSet<String>) -> Vec<String> {
        set.into_iter().collect()
    }

    #[test]
    fn parses_a_filter_and_lists_its_fields() {
        let expr = parse_expr("amount > 0 AND currency = 'EUR' OR user_id IS NULL").unwrap();
        assert_eq!(names(referenced_fields(&expr)), ["amount", "currency", "user_id"]);
    }

    #[test]
    fn string_literals_are_not_fields() {
        let expr = parse_expr("country IN ('DE', 'FR') AND name LIKE 'a%'").unwrap();
        assert_eq!(names(referenced_fields(&expr)), ["country", "name"]);
    }

    #[test]
    fn case_and_casts_reference_their_fields() {
        let expr = parse_expr("CASE WHEN CAST(amount AS DOUBLE) > limit_eur THEN 'big' ELSE 'small' END").unwrap();
        assert_eq!(names(referenced_fields(&expr)), ["amount", "limit_eur"]);
    }

    #[test]
    fn refuses_trailing_tokens() {
        let err = parse_expr("amount > 0 amount").unwrap_err();
        assert!(matches!(err, ExprError::Syntax(_)), "{err}");
    }

    #[test]
    fn refuses_broken_syntax() {
        assert!(parse_expr("amount >").is_err());
        assert!(parse_expr("").is_err());
    }

    #[test]
    fn a_bare_field_names_its_output() {
        let item = parse_select_item("user_id").unwrap();
        assert!(matches!(item, SelectItem::Named { ref name, .. } if name == "user_id"));
    }

    #[test]
    fn an_alias_names_the_output() {
        let item = parse_select_item("amount * 1.19 AS gross").unwrap();
        assert!(matches!(item, SelectItem::Named { ref name, .. } if name == "gross"));
    }

    #[test]
    fn a_computed_item_without_alias_is_refused() {
        assert_eq!(parse_select_item("amount * 2"), Err(ExprError::MissingAlias("amount * 2".into())));
    }

    #[test]
    fn star_selects_everything() {
        assert_eq!(parse_select_item("*"), Ok(SelectItem::Wildcard));
        assert!(matches!(parse_select_item("t.*"), Err(ExprError::QualifiedWildcard(_))));
    }
}
