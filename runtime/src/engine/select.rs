//! `select`: replaces each row by its SQL expressions; the engine's hidden columns stay.

use std::sync::Arc;

use arrow::{
    array::ArrayRef,
    datatypes::{Field, Schema},
    record_batch::RecordBatch,
};
use weir_crds::expr::SelectItem;

use super::{
    EngineError,
    expr::PhysicalExpr,
    is_hidden,
    operator::{Operator, Output},
};

/// Computes the selected columns of every row.
#[derive(Debug, Clone)]
pub struct Select {
    step: String,
    items: Vec<Projection>,
}

#[derive(Debug, Clone)]
enum Projection {
    /// `*`: every field of the input.
    All,
    Named(PhysicalExpr, String),
}

impl Select {
    /// Compiles the items of the step at `step`.
    pub fn new(step: String, items: &[SelectItem]) -> Result<Self, EngineError> {
        let items = items
            .iter()
            .enumerate()
            .map(|(j, item)| match item {
                SelectItem::Wildcard => Ok(Projection::All),
                SelectItem::Named { expr, name } => PhysicalExpr::compile(expr)
                    .map(|e| Projection::Named(e, name.clone()))
                    .map_err(|source| EngineError::Expr { step: format!("{step}[{j}]"), source }),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { step, items })
    }
}

impl Operator for Select {
    fn step(&self) -> &str {
        &self.step
    }

    fn fresh(&self) -> Box<dyn Operator> {
        Box::new(self.clone())
    }

    fn process(&mut self, batch: RecordBatch, _watermark: i64) -> Result<Output, EngineError> {
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let schema = batch.schema();
        let visible = || schema.fields().iter().zip(batch.columns()).filter(|(f, _)| !is_hidden(f.name()));
        for item in &self.items {
            match item {
                Projection::All => {
                    for (field, column) in visible() {
                        fields.push(field.as_ref().clone());
                        columns.push(column.clone());
                    }
                }
                Projection::Named(expr, name) => {
                    let column = expr
                        .evaluate(&batch)
                        .map_err(|source| EngineError::Expr { step: self.step.clone(), source })?;
                    fields.push(Field::new(name, column.data_type().clone(), true));
                    columns.push(column);
                }
            }
        }
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            if is_hidden(field.name()) {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
        Ok(Output::rows(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?))
    }
}
