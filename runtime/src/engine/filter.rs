//! `filter`: keeps the rows its SQL predicate is true for.

use arrow::{compute::filter_record_batch, record_batch::RecordBatch};
use sqlparser::ast::Expr;

use super::{
    EngineError,
    expr::PhysicalExpr,
    operator::{Operator, Output},
};

/// Keeps the rows `predicate` holds for.
#[derive(Debug, Clone)]
pub struct Filter {
    step: String,
    predicate: PhysicalExpr,
}

impl Filter {
    /// Compiles the predicate of the step at `step`.
    pub fn new(step: String, predicate: &Expr) -> Result<Self, EngineError> {
        let predicate =
            PhysicalExpr::compile(predicate).map_err(|source| EngineError::Expr { step: step.clone(), source })?;
        Ok(Self { step, predicate })
    }
}

impl Operator for Filter {
    fn step(&self) -> &str {
        &self.step
    }

    fn fresh(&self) -> Box<dyn Operator> {
        Box::new(self.clone())
    }

    fn process(&mut self, batch: RecordBatch, _watermark: i64) -> Result<Output, EngineError> {
        let keep = self
            .predicate
            .evaluate_predicate(&batch)
            .map_err(|source| EngineError::Expr { step: self.step.clone(), source })?;
        Ok(Output::rows(filter_record_batch(&batch, &keep)?))
    }
}
