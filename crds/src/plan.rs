//! A pipeline compiled once: its SQL parsed and `keyBy` + `window` + `aggregate` made one
//! stage, as the runtime's engine runs it. Validation reports every problem of a spec with
//! its field path; this is what a valid spec means, for whoever runs it.

use std::collections::BTreeSet;

use sqlparser::ast::Expr;

use crate::{
    Aggregation, Step, Window,
    expr::{self, ExprError, SelectItem},
    pipeline::Dedupe,
};

/// One stage of a compiled pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Where it was declared, e.g. `pipeline[2].filter` (an aggregate: its `aggregate` step).
    pub at: String,
    /// What it does.
    pub kind: StageKind,
}

/// What a stage does.
#[derive(Debug, Clone, PartialEq)]
pub enum StageKind {
    /// Keeps the rows the predicate holds for.
    Filter(Expr),
    /// Computes these items of every row.
    Select(Vec<SelectItem>),
    /// Drops repeats of a key.
    Dedupe(Dedupe),
    /// Folds each key's rows per window (without a `window` step: one window for all time).
    Aggregate {
        /// The `keyBy` fields.
        keys: Vec<String>,
        /// The `window` step, if there is one.
        window: Option<Window>,
        /// What is computed.
        aggregations: Vec<Aggregation>,
    },
}

/// A step whose SQL does not parse (validation reports it with its field path first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {source}")]
pub struct CompileError {
    /// Where, e.g. `pipeline[0].filter` or `pipeline[1].select[2]`.
    pub at: String,
    /// Why.
    pub source: ExprError,
}

/// A pipeline's stages, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PipelinePlan {
    /// The stages.
    pub stages: Vec<Stage>,
}

impl PipelinePlan {
    /// Compiles `steps` (a spec's `pipeline`).
    pub fn compile(steps: &[Step]) -> Result<Self, CompileError> {
        let mut stages = Vec::new();
        let mut keys = Vec::new();
        let mut window = None;
        for (i, step) in steps.iter().enumerate() {
            let at = format!("pipeline[{i}].{}", step.kind());
            let kind = match step {
                Step::Filter(text) => {
                    StageKind::Filter(expr::parse_expr(text).map_err(|source| CompileError { at: at.clone(), source })?)
                }
                Step::Select(items) => StageKind::Select(
                    items
                        .iter()
                        .enumerate()
                        .map(|(j, text)| {
                            expr::parse_select_item(text)
                                .map_err(|source| CompileError { at: format!("{at}[{j}]"), source })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Step::Dedupe(dedupe) => StageKind::Dedupe(dedupe.clone()),
                Step::KeyBy(fields) => {
                    keys.clone_from(fields);
                    continue;
                }
                Step::Window(w) => {
                    window = Some(w.clone());
                    continue;
                }
                Step::Aggregate(aggregations) => StageKind::Aggregate {
                    keys: keys.clone(),
                    window: window.take(),
                    aggregations: aggregations.clone(),
                },
            };
            stages.push(Stage { at, kind });
        }
        Ok(Self { stages })
    }

    /// Every field name a stage reads (to know which record metadata to decode).
    pub fn referenced_fields(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for stage in &self.stages {
            match &stage.kind {
                StageKind::Filter(e) => names.extend(expr::referenced_fields(e)),
                StageKind::Select(items) => {
                    for item in items {
                        if let SelectItem::Named { expr, .. } = item {
                            names.extend(expr::referenced_fields(expr));
                        }
                    }
                }
                StageKind::Dedupe(dedupe) => names.extend(dedupe.key.iter().cloned()),
                StageKind::Aggregate { keys, aggregations, .. } => {
                    names.extend(keys.iter().cloned());
                    names.extend(aggregations.iter().filter_map(|a| a.field.clone()));
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobDocument;

    fn steps(yaml: &str) -> Vec<Step> {
        let spec = format!(
            "source: {{kafka: {{bootstrapServers: k:9092, topic: in}}}}\n\
             sink: {{kafka: {{bootstrapServers: k:9092, topic: out}}}}\npipeline:\n{yaml}"
        );
        JobDocument::parse(&spec).unwrap().spec.pipeline
    }

    #[test]
    fn key_by_window_and_aggregate_are_one_stage_and_fields_are_collected() {
        let plan = PipelinePlan::compile(&steps(
            "  - filter: \"amount > 0 AND _kafka_key IS NOT NULL\"\n  - select: [user_id, amount, id, \"ts * 2 AS t\"]\n  \
             - dedupe: {key: [id], within: 1m}\n  - keyBy: [user_id]\n  - window: {tumbling: {size: 10s}}\n  \
             - aggregate: [{fn: sum, field: amount}]\n",
        ))
        .unwrap();
        let at: Vec<&str> = plan.stages.iter().map(|s| s.at.as_str()).collect();
        assert_eq!(at, ["pipeline[0].filter", "pipeline[1].select", "pipeline[2].dedupe", "pipeline[5].aggregate"]);
        let StageKind::Aggregate { keys, window, .. } = &plan.stages[3].kind else { panic!("{:?}", plan.stages[3]) };
        assert_eq!(keys, &["user_id".to_owned()]);
        assert!(matches!(window, Some(Window::Tumbling(_))));
        let fields: Vec<String> = plan.referenced_fields().into_iter().collect();
        assert_eq!(fields, ["_kafka_key", "amount", "id", "ts", "user_id"]);
    }

    #[test]
    fn a_step_that_does_not_parse_is_named() {
        let error = PipelinePlan::compile(&[Step::Select(vec!["a".into(), "b +".into()])]).unwrap_err();
        assert_eq!(error.at, "pipeline[0].select[1]");
    }
}
