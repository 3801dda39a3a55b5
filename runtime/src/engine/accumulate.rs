//! Aggregate state, stored column-wise: one vector per aggregate, indexed by a slot that
//! stands for one (key, window). Updates are tight loops over typed input columns.

use std::sync::Arc;

use arrow::{
    array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray},
    compute::kernels::cast::cast,
    datatypes::{DataType, Field, Float64Type, Int64Type},
    error::ArrowError,
};
use std::collections::HashMap;
use weir_crds::{AggregateFn, Aggregation};

/// One slot index per (row, window) pair to update.
#[derive(Debug, Default)]
pub struct Updates {
    /// Input row of each update.
    pub rows: Vec<u32>,
    /// Slot of each update.
    pub slots: Vec<u32>,
}

impl Updates {
    /// Forgets all pairs, keeping the allocations.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.slots.clear();
    }

    /// Adds one pair.
    #[inline]
    pub fn push(&mut self, row: usize, slot: u32) {
        self.rows.push(row as u32);
        self.slots.push(slot);
    }
}

/// The aggregates of a window step, for every slot.
#[derive(Debug)]
pub struct Accumulators {
    specs: Vec<Aggregation>,
    columns: Vec<Column>,
    slots: usize,
    free: Vec<u32>,
}

#[derive(Debug)]
enum Column {
    Count(Vec<i64>),
    SumInt(Vec<Option<i64>>),
    SumFloat(Vec<Option<f64>>),
    Avg { sum: Vec<f64>, count: Vec<i64> },
    ExtremeInt { values: Vec<Option<i64>>, output: DataType, max: bool },
    ExtremeFloat { values: Vec<Option<f64>>, max: bool },
    ExtremeStr { values: Vec<Option<String>>, max: bool },
}

impl Column {
    fn new(function: AggregateFn) -> Self {
        match function {
            AggregateFn::Count => Self::Count(Vec::new()),
            AggregateFn::Sum => Self::SumInt(Vec::new()),
            AggregateFn::Avg => Self::Avg { sum: Vec::new(), count: Vec::new() },
            AggregateFn::Min => Self::ExtremeInt { values: Vec::new(), output: DataType::Int64, max: false },
            AggregateFn::Max => Self::ExtremeInt { values: Vec::new(), output: DataType::Int64, max: true },
        }
    }

    fn grow(&mut self, len: usize) {
        match self {
            Self::Count(v) => v.resize(len, 0),
            Self::SumInt(v) | Self::ExtremeInt { values: v, .. } => v.resize(len, None),
            Self::SumFloat(v) | Self::ExtremeFloat { values: v, .. } => v.resize(len, None),
            Self::Avg { sum, count } => {
                sum.resize(len, 0.0);
                count.resize(len, 0);
            }
            Self::ExtremeStr { values, .. } => values.resize(len, None),
        }
    }

    fn reset(&mut self, slot: usize) {
        match self {
            Self::Count(v) => v[slot] = 0,
            Self::SumInt(v) | Self::ExtremeInt { values: v, .. } => v[slot] = None,
            Self::SumFloat(v) | Self::ExtremeFloat { values: v, .. } => v[slot] = None,
            Self::Avg { sum, count } => {
                sum[slot] = 0.0;
                count[slot] = 0;
            }
            Self::ExtremeStr { values, .. } => values[slot] = None,
        }
    }

    fn heap_bytes(&self) -> usize {
        fn bytes<T>(v: &Vec<T>) -> usize {
            v.capacity() * size_of::<T>()
        }
        match self {
            Self::Count(v) => bytes(v),
            Self::SumInt(v) | Self::ExtremeInt { values: v, .. } => bytes(v),
            Self::SumFloat(v) | Self::ExtremeFloat { values: v, .. } => bytes(v),
            Self::Avg { sum, count } => bytes(sum) + bytes(count),
            Self::ExtremeStr { values, .. } => {
                bytes(values) + values.iter().flatten().map(String::capacity).sum::<usize>()
            }
        }
    }

    /// Switches an integer column to floating point when a float input arrives.
    fn widen_to_float(&mut self) {
        match self {
            Self::SumInt(v) => *self = Self::SumFloat(v.iter().map(|x| x.map(|i| i as f64)).collect()),
            Self::ExtremeInt { values, max, .. } => {
                *self = Self::ExtremeFloat { values: values.iter().map(|x| x.map(|i| i as f64)).collect(), max: *max }
            }
            _ => {}
        }
    }

    fn widen_to_string(&mut self) {
        let max = match self {
            Self::ExtremeInt { max, .. } | Self::ExtremeFloat { max, .. } => *max,
            _ => return,
        };
        let values: Vec<Option<String>> = match self {
            Self::ExtremeInt { values, .. } => values.iter().map(|x| x.map(|i| i.to_string())).collect(),
            Self::ExtremeFloat { values, .. } => values.iter().map(|x| x.map(|f| f.to_string())).collect(),
            _ => return,
        };
        *self = Self::ExtremeStr { values, max };
    }
}

/// The inputs of one update, brought to the accumulators' types ([`Accumulators::prepare`]).
#[derive(Debug)]
pub struct Prepared(Vec<PreparedInput>);

#[derive(Debug)]
enum PreparedInput {
    /// `count(*)`: every row counts.
    Rows,
    /// `count(field)`: rows where the field is not NULL count.
    Validity(ArrayRef),
    /// Values to fold in.
    Values(Input),
}

/// What an input column holds, once brought to a type the accumulators use.
#[derive(Debug)]
enum Input {
    Int(Int64Array, DataType),
    Float(Float64Array),
    Str(StringArray),
}

impl Input {
    /// The value at `row` as a float, when it is a number and not NULL.
    fn float(&self, row: usize) -> Option<f64> {
        match self {
            Self::Int(a, _) => a.is_valid(row).then(|| a.value(row) as f64),
            Self::Float(a) => a.is_valid(row).then(|| a.value(row)),
            Self::Str(_) => None,
        }
    }
}

fn prepare(array: &ArrayRef, numeric_only: bool) -> Result<Input, ArrowError> {
    let data_type = array.data_type().clone();
    Ok(match &data_type {
        t if t.is_integer() => {
            Input::Int(cast(array, &DataType::Int64)?.as_primitive::<Int64Type>().clone(), t.clone())
        }
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 if !numeric_only => {
            Input::Int(cast(array, &DataType::Int64)?.as_primitive::<Int64Type>().clone(), data_type)
        }
        t if t.is_numeric() => Input::Float(cast(array, &DataType::Float64)?.as_primitive::<Float64Type>().clone()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View if !numeric_only => {
            Input::Str(cast(array, &DataType::Utf8)?.as_string::<i32>().clone())
        }
        _ => Input::Float(cast(array, &DataType::Float64)?.as_primitive::<Float64Type>().clone()),
    })
}

impl Accumulators {
    /// State for these aggregates, with no slots yet.
    pub fn new(specs: &[Aggregation]) -> Self {
        let columns = specs.iter().map(|s| Column::new(s.function)).collect();
        Self { specs: specs.to_vec(), columns, slots: 0, free: Vec::new() }
    }

    /// The aggregates, in output order.
    pub fn specs(&self) -> &[Aggregation] {
        &self.specs
    }

    /// Bytes the aggregates hold: their vectors, and the text of string minima and maxima.
    pub fn heap_bytes(&self) -> usize {
        self.columns.iter().map(Column::heap_bytes).sum::<usize>() + self.free.capacity() * size_of::<u32>()
    }

    /// Slots in use.
    pub fn live_slots(&self) -> usize {
        self.slots - self.free.len()
    }

    /// A slot with empty aggregates.
    pub fn allocate(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            for column in &mut self.columns {
                column.reset(slot as usize);
            }
            return slot;
        }
        self.slots += 1;
        for column in &mut self.columns {
            column.grow(self.slots);
        }
        (self.slots - 1) as u32
    }

    /// Returns a slot for reuse.
    pub fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Applies `updates` with the field values of `inputs` (one per aggregate, `None` for a
    /// count of rows). On error nothing has changed.
    pub fn update(&mut self, inputs: &[Option<ArrayRef>], updates: &Updates) -> Result<(), ArrowError> {
        let prepared = self.prepare(inputs)?;
        self.apply(&prepared, updates);
        Ok(())
    }

    /// Brings `inputs` to the types the accumulators use. This is the part of an update that
    /// can fail, done before any state changes so a failed batch leaves none behind.
    pub fn prepare(&self, inputs: &[Option<ArrayRef>]) -> Result<Prepared, ArrowError> {
        let inputs = self
            .columns
            .iter()
            .zip(&self.specs)
            .zip(inputs)
            .map(|((column, spec), input)| {
                Ok(match (input, column) {
                    (None, _) => PreparedInput::Rows,
                    (Some(array), Column::Count(_)) => PreparedInput::Validity(array.clone()),
                    (Some(array), _) => {
                        let numeric_only = matches!(spec.function, AggregateFn::Sum | AggregateFn::Avg);
                        PreparedInput::Values(prepare(array, numeric_only)?)
                    }
                })
            })
            .collect::<Result<_, ArrowError>>()?;
        Ok(Prepared(inputs))
    }

    /// Applies `updates` with inputs from [`Self::prepare`]; cannot fail.
    pub fn apply(&mut self, prepared: &Prepared, updates: &Updates) {
        for (column, input) in self.columns.iter_mut().zip(&prepared.0) {
            match (input, &mut *column) {
                (PreparedInput::Rows, Column::Count(counts)) => {
                    for &slot in &updates.slots {
                        counts[slot as usize] += 1;
                    }
                }
                (PreparedInput::Rows, _) => {}
                (PreparedInput::Validity(array), Column::Count(counts)) => {
                    for (&row, &slot) in updates.rows.iter().zip(&updates.slots) {
                        counts[slot as usize] += i64::from(array.is_valid(row as usize));
                    }
                }
                (PreparedInput::Validity(_), _) => {}
                (PreparedInput::Values(input), _) => {
                    match (input, &*column) {
                        (Input::Float(_), Column::SumInt(_) | Column::ExtremeInt { .. }) => column.widen_to_float(),
                        (Input::Str(_), Column::ExtremeInt { .. } | Column::ExtremeFloat { .. }) => {
                            column.widen_to_string();
                        }
                        _ => {}
                    }
                    apply(column, input, updates);
                }
            }
        }
    }

    /// Folds slot `from` into slot `into` (session windows merging) and releases `from`.
    pub fn merge(&mut self, into: u32, from: u32) {
        let (i, f) = (into as usize, from as usize);
        for column in &mut self.columns {
            match column {
                Column::Count(v) => v[i] += v[f],
                Column::SumInt(v) => v[i] = add_opt(v[i], v[f], i64::wrapping_add),
                Column::SumFloat(v) => v[i] = add_opt(v[i], v[f], |a, b| a + b),
                Column::Avg { sum, count } => {
                    sum[i] += sum[f];
                    count[i] += count[f];
                }
                Column::ExtremeInt { values, max, .. } => values[i] = pick(values[i], values[f], *max),
                Column::ExtremeFloat { values, max } => values[i] = pick_f(values[i], values[f], *max),
                Column::ExtremeStr { values, max } => {
                    let other = values[f].take();
                    values[i] = pick_str(values[i].take(), other, *max);
                }
            }
        }
        self.release(from);
    }

    /// The aggregate values of `slots`, one array per aggregate, in slot order.
    pub fn finish(&self, slots: &[u32]) -> Result<Vec<ArrayRef>, ArrowError> {
        self.columns
            .iter()
            .map(|column| -> Result<ArrayRef, ArrowError> {
                let at = |i: &u32| *i as usize;
                Ok(match column {
                    Column::Count(v) => Arc::new(Int64Array::from_iter_values(slots.iter().map(|s| v[at(s)]))),
                    Column::SumInt(v) => Arc::new(slots.iter().map(|s| v[at(s)]).collect::<Int64Array>()),
                    Column::SumFloat(v) => Arc::new(slots.iter().map(|s| v[at(s)]).collect::<Float64Array>()),
                    Column::Avg { sum, count } => Arc::new(
                        slots
                            .iter()
                            .map(|s| (count[at(s)] > 0).then(|| sum[at(s)] / count[at(s)] as f64))
                            .collect::<Float64Array>(),
                    ),
                    Column::ExtremeInt { values, output, .. } => {
                        let ints: ArrayRef = Arc::new(slots.iter().map(|s| values[at(s)]).collect::<Int64Array>());
                        if output == &DataType::Int64 { ints } else { cast(&ints, output)? }
                    }
                    Column::ExtremeFloat { values, .. } => {
                        Arc::new(slots.iter().map(|s| values[at(s)]).collect::<Float64Array>())
                    }
                    Column::ExtremeStr { values, .. } => {
                        Arc::new(slots.iter().map(|s| values[at(s)].as_deref()).collect::<StringArray>())
                    }
                })
            })
            .collect()
    }
}

/// Field metadata key naming how a state column is read back.
const STATE_KIND: &str = "weir.state";
/// Field metadata key of a min/max column's output type.
const STATE_OUTPUT: &str = "weir.output";

impl Accumulators {
    /// The state of `slots` as columns, for a checkpoint. Unlike [`Self::finish`] it keeps
    /// what merging needs (an average's sum and count) and how to read it back.
    pub fn snapshot(&self, slots: &[u32]) -> Vec<(Field, ArrayRef)> {
        let at = |s: &u32| *s as usize;
        let mut out = Vec::new();
        for (i, column) in self.columns.iter().enumerate() {
            let name = format!("__weir_agg{i}");
            let field = |suffix: &str, data_type: DataType, kind: &str| {
                let meta = HashMap::from([(STATE_KIND.to_owned(), kind.to_owned())]);
                Field::new(format!("{name}{suffix}"), data_type, true).with_metadata(meta)
            };
            match column {
                Column::Count(v) => out.push((
                    field("", DataType::Int64, "count"),
                    Arc::new(Int64Array::from_iter_values(slots.iter().map(|s| v[at(s)]))) as ArrayRef,
                )),
                Column::SumInt(v) => out.push((
                    field("", DataType::Int64, "sum_int"),
                    Arc::new(slots.iter().map(|s| v[at(s)]).collect::<Int64Array>()),
                )),
                Column::SumFloat(v) => out.push((
                    field("", DataType::Float64, "sum_float"),
                    Arc::new(slots.iter().map(|s| v[at(s)]).collect::<Float64Array>()),
                )),
                Column::Avg { sum, count } => {
                    out.push((
                        field(".sum", DataType::Float64, "avg_sum"),
                        Arc::new(Float64Array::from_iter_values(slots.iter().map(|s| sum[at(s)]))),
                    ));
                    out.push((
                        field(".count", DataType::Int64, "avg_count"),
                        Arc::new(Int64Array::from_iter_values(slots.iter().map(|s| count[at(s)]))),
                    ));
                }
                Column::ExtremeInt { values, output, max } => {
                    let kind = if *max { "max_int" } else { "min_int" };
                    let mut f = field("", DataType::Int64, kind);
                    f.metadata_mut().insert(STATE_OUTPUT.to_owned(), output.to_string());
                    out.push((f, Arc::new(slots.iter().map(|s| values[at(s)]).collect::<Int64Array>())));
                }
                Column::ExtremeFloat { values, max } => out.push((
                    field("", DataType::Float64, if *max { "max_float" } else { "min_float" }),
                    Arc::new(slots.iter().map(|s| values[at(s)]).collect::<Float64Array>()),
                )),
                Column::ExtremeStr { values, max } => out.push((
                    field("", DataType::Utf8, if *max { "max_str" } else { "min_str" }),
                    Arc::new(slots.iter().map(|s| values[at(s)].as_deref()).collect::<StringArray>()),
                )),
            }
        }
        out
    }

    /// Empty state with one slot per row of a [`Self::snapshot`] batch: row `i` is slot `i`.
    pub fn restore(specs: &[Aggregation], batch: &RecordBatch) -> Result<Self, ArrowError> {
        let columns = (0..specs.len()).map(|i| restore_column(batch, i)).collect::<Result<_, _>>()?;
        Ok(Self { specs: specs.to_vec(), columns, slots: batch.num_rows(), free: Vec::new() })
    }
}

fn restore_column(batch: &RecordBatch, i: usize) -> Result<Column, ArrowError> {
    let name = format!("__weir_agg{i}");
    let schema = batch.schema();
    let field = schema
        .field_with_name(&name)
        .or_else(|_| schema.field_with_name(&format!("{name}.sum")))
        .map_err(|_| invalid(format!("checkpoint has no state for aggregate {i}")))?;
    let kind = field.metadata().get(STATE_KIND).map_or("", String::as_str);
    let ints = |column: &str| -> Result<Vec<Option<i64>>, ArrowError> {
        let array = state_column(batch, column)?.as_primitive_opt::<Int64Type>();
        Ok(array.ok_or_else(|| invalid(format!("{column} is not Int64")))?.iter().collect())
    };
    let floats = |column: &str| -> Result<Vec<Option<f64>>, ArrowError> {
        let array = state_column(batch, column)?.as_primitive_opt::<Float64Type>();
        Ok(array.ok_or_else(|| invalid(format!("{column} is not Float64")))?.iter().collect())
    };
    let max = kind.starts_with("max");
    Ok(match kind {
        "count" => Column::Count(ints(&name)?.into_iter().map(Option::unwrap_or_default).collect()),
        "sum_int" => Column::SumInt(ints(&name)?),
        "sum_float" => Column::SumFloat(floats(&name)?),
        "avg_sum" => Column::Avg {
            sum: floats(&format!("{name}.sum"))?.into_iter().map(Option::unwrap_or_default).collect(),
            count: ints(&format!("{name}.count"))?.into_iter().map(Option::unwrap_or_default).collect(),
        },
        "min_int" | "max_int" => {
            let output = match field.metadata().get(STATE_OUTPUT) {
                Some(text) => text.parse::<DataType>()?,
                None => DataType::Int64,
            };
            Column::ExtremeInt { values: ints(&name)?, output, max }
        }
        "min_float" | "max_float" => Column::ExtremeFloat { values: floats(&name)?, max },
        "min_str" | "max_str" => {
            let array = state_column(batch, &name)?.as_string_opt::<i32>();
            let values = array.ok_or_else(|| invalid(format!("{name} is not Utf8")))?;
            Column::ExtremeStr { values: values.iter().map(|v| v.map(str::to_owned)).collect(), max }
        }
        other => return Err(invalid(format!("unknown aggregate state `{other}` in {name}"))),
    })
}

fn state_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    batch.column_by_name(name).ok_or_else(|| invalid(format!("checkpoint has no column {name}")))
}

fn invalid(message: String) -> ArrowError {
    ArrowError::InvalidArgumentError(message)
}

fn add_opt<T: Copy>(a: Option<T>, b: Option<T>, add: impl Fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(add(x, y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn pick(a: Option<i64>, b: Option<i64>, max: bool) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if max { x.max(y) } else { x.min(y) }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn pick_f(a: Option<f64>, b: Option<f64>, max: bool) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if max { x.max(y) } else { x.min(y) }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn pick_str(a: Option<String>, b: Option<String>, max: bool) -> Option<String> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if (x < y) == max { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The hot loop: one pass over the updates for one aggregate.
fn apply(column: &mut Column, input: &Input, updates: &Updates) {
    let pairs = updates.rows.iter().zip(&updates.slots).map(|(&r, &s)| (r as usize, s as usize));
    match (column, input) {
        (Column::SumInt(v), Input::Int(a, _)) => {
            let values = a.values();
            if a.null_count() == 0 {
                for (r, s) in pairs {
                    v[s] = Some(v[s].unwrap_or(0).wrapping_add(values[r]));
                }
            } else {
                for (r, s) in pairs.filter(|(r, _)| a.is_valid(*r)) {
                    v[s] = Some(v[s].unwrap_or(0).wrapping_add(values[r]));
                }
            }
        }
        (Column::SumFloat(v), Input::Float(a)) => {
            for (r, s) in pairs.filter(|(r, _)| a.is_valid(*r)) {
                v[s] = Some(v[s].unwrap_or(0.0) + a.value(r));
            }
        }
        (Column::SumFloat(v), Input::Int(a, _)) => {
            for (r, s) in pairs.filter(|(r, _)| a.is_valid(*r)) {
                v[s] = Some(v[s].unwrap_or(0.0) + a.value(r) as f64);
            }
        }
        (Column::Avg { sum, count }, input) => {
            for (r, s) in pairs {
                if let Some(x) = input.float(r) {
                    sum[s] += x;
                    count[s] += 1;
                }
            }
        }
        (Column::ExtremeInt { values, output, max }, Input::Int(a, input_type)) => {
            if output != input_type {
                output.clone_from(input_type);
            }
            for (r, s) in pairs.filter(|(r, _)| a.is_valid(*r)) {
                values[s] = pick(values[s], Some(a.value(r)), *max);
            }
        }
        (Column::ExtremeFloat { values, max }, input) => {
            for (r, s) in pairs {
                values[s] = pick_f(values[s], input.float(r), *max);
            }
        }
        (Column::ExtremeStr { values, max }, input) => {
            for (r, s) in pairs {
                let value = match input {
                    Input::Int(a, _) => a.is_valid(r).then(|| a.value(r).to_string()),
                    Input::Float(a) => a.is_valid(r).then(|| a.value(r).to_string()),
                    Input::Str(a) => a.is_valid(r).then(|| a.value(r).to_owned()),
                };
                let current = values[s].take();
                values[s] = pick_str(current, value, *max);
            }
        }
        // Remaining combinations cannot occur: `update` widens the column first.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(function: AggregateFn, field: Option<&str>) -> Aggregation {
        Aggregation { function, field: field.map(str::to_owned), alias: None }
    }

    fn updates(pairs: &[(usize, u32)]) -> Updates {
        let mut u = Updates::default();
        for &(r, s) in pairs {
            u.push(r, s);
        }
        u
    }

    #[test]
    fn sums_counts_and_averages_per_slot() {
        let mut acc = Accumulators::new(&[
            agg(AggregateFn::Sum, Some("x")),
            agg(AggregateFn::Count, None),
            agg(AggregateFn::Avg, Some("x")),
        ]);
        let (a, b) = (acc.allocate(), acc.allocate());
        let x: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(4)]));
        acc.update(&[Some(x.clone()), None, Some(x)], &updates(&[(0, a), (1, a), (2, b), (3, b)])).unwrap();
        let out = acc.finish(&[a, b]).unwrap();
        assert_eq!(out[0].as_primitive::<Int64Type>().values(), &[3, 4]);
        assert_eq!(out[1].as_primitive::<Int64Type>().values(), &[2, 2]);
        assert_eq!(out[2].as_primitive::<Float64Type>().values(), &[1.5, 4.0]);
    }

    #[test]
    fn an_integer_sum_widens_when_floats_arrive() {
        let mut acc = Accumulators::new(&[agg(AggregateFn::Sum, Some("x"))]);
        let slot = acc.allocate();
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![2]));
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![0.5]));
        acc.update(&[Some(ints)], &updates(&[(0, slot)])).unwrap();
        acc.update(&[Some(floats)], &updates(&[(0, slot)])).unwrap();
        assert_eq!(acc.finish(&[slot]).unwrap()[0].as_primitive::<Float64Type>().value(0), 2.5);
    }

    #[test]
    fn a_sum_of_only_nulls_is_null() {
        let mut acc = Accumulators::new(&[agg(AggregateFn::Sum, Some("x"))]);
        let slot = acc.allocate();
        let nulls: ArrayRef = Arc::new(Int64Array::from(vec![None::<i64>]));
        acc.update(&[Some(nulls)], &updates(&[(0, slot)])).unwrap();
        assert!(acc.finish(&[slot]).unwrap()[0].is_null(0));
    }

    #[test]
    fn min_and_max_of_strings_compare_as_text() {
        let mut acc = Accumulators::new(&[agg(AggregateFn::Min, Some("s")), agg(AggregateFn::Max, Some("s"))]);
        let slot = acc.allocate();
        let s: ArrayRef = Arc::new(StringArray::from(vec!["b", "a", "c"]));
        acc.update(&[Some(s.clone()), Some(s)], &updates(&[(0, slot), (1, slot), (2, slot)])).unwrap();
        let out = acc.finish(&[slot]).unwrap();
        assert_eq!(out[0].as_string::<i32>().value(0), "a");
        assert_eq!(out[1].as_string::<i32>().value(0), "c");
    }

    #[test]
    fn merging_slots_combines_their_aggregates() {
        let mut acc = Accumulators::new(&[agg(AggregateFn::Count, None), agg(AggregateFn::Max, Some("x"))]);
        let (a, b) = (acc.allocate(), acc.allocate());
        let x: ArrayRef = Arc::new(Int64Array::from(vec![5, 9]));
        acc.update(&[None, Some(x)], &updates(&[(0, a), (1, b)])).unwrap();
        acc.merge(a, b);
        let out = acc.finish(&[a]).unwrap();
        assert_eq!(out[0].as_primitive::<Int64Type>().value(0), 2);
        assert_eq!(out[1].as_primitive::<Int64Type>().value(0), 9);
        assert_eq!(acc.live_slots(), 1);
    }

    #[test]
    fn a_reused_slot_starts_empty() {
        let mut acc = Accumulators::new(&[agg(AggregateFn::Count, None)]);
        let slot = acc.allocate();
        acc.update(&[None], &updates(&[(0, slot)])).unwrap();
        acc.release(slot);
        let again = acc.allocate();
        assert_eq!(again, slot);
        assert_eq!(acc.finish(&[again]).unwrap()[0].as_primitive::<Int64Type>().value(0), 0);
    }
}
