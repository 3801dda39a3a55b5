//! Keys of stateful operators as compact byte rows: compared and hashed cheaply, turned back
//! into typed columns for results and snapshots.

use arrow::{
    array::{ArrayRef, new_null_array},
    compute::kernels::cast::cast,
    datatypes::{DataType, Field},
    error::ArrowError,
    record_batch::RecordBatch,
    row::{RowConverter, Rows, SortField},
};

/// Encodes the values of key fields as rows. The first batch encoded fixes the key types;
/// later batches are cast to them, so a key inferred as an integer in one batch and as a
/// string in another still groups together.
#[derive(Debug)]
pub struct KeyCodec {
    fields: Vec<String>,
    fixed: Option<(Vec<DataType>, RowConverter)>,
}

impl KeyCodec {
    /// A codec for the values of `fields`.
    pub fn new(fields: Vec<String>) -> Self {
        Self { fields, fixed: None }
    }

    /// The key fields.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The key rows of every row of `batch`. A field no record has is all NULL (JSON
    /// records may omit fields).
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Rows, ArrowError> {
        let mut columns: Vec<ArrayRef> = self.fields.iter().map(|name| column_or_nulls(batch, name)).collect();
        let (types, converter) = match &self.fixed {
            Some(fixed) => fixed,
            None => {
                let types: Vec<DataType> = columns
                    .iter()
                    .map(|c| if c.data_type() == &DataType::Null { DataType::Utf8 } else { c.data_type().clone() })
                    .collect();
                let converter = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
                self.fixed.insert((types, converter))
            }
        };
        for (column, data_type) in columns.iter_mut().zip(types) {
            if column.data_type() != data_type {
                *column = cast(column, data_type)?;
            }
        }
        converter.convert_columns(&columns)
    }

    /// The key columns of `rows` (made by [`Self::encode`]), named and typed; `None` before
    /// any batch fixed the types.
    pub fn decode<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<Vec<(Field, ArrayRef)>>, ArrowError> {
        let Some((types, converter)) = &self.fixed else { return Ok(None) };
        let parser = converter.parser();
        let columns = converter.convert_rows(rows.into_iter().map(|r| parser.parse(r)))?;
        let fields = self.fields.iter().zip(types).map(|(name, t)| Field::new(name, t.clone(), true));
        Ok(Some(fields.zip(columns).collect()))
    }
}

/// A field no record of the batch has is all NULL.
pub fn column_or_nulls(batch: &RecordBatch, name: &str) -> ArrayRef {
    batch.column_by_name(name).cloned().unwrap_or_else(|| new_null_array(&DataType::Utf8, batch.num_rows()))
}
