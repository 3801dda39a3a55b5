//! SQL expressions compiled once and evaluated on whole record batches with Arrow kernels.
//!
//! Semantics worth knowing: `/` always divides as floating point; `%` by zero and failed
//! casts give NULL; a NULL filter result drops the record; integer arithmetic wraps.

use std::sync::Arc;

use arrow::{
    array::{
        Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, Scalar, StringArray, UInt32Array,
        new_null_array,
    },
    compute::{
        CastOptions,
        kernels::{
            boolean::{and_kleene, not, or_kleene},
            cast::cast_with_options,
            cmp, numeric,
            substring::substring,
            zip::zip,
        },
        take,
    },
    datatypes::{DataType, Float64Type, Int64Type, TimeUnit},
    error::ArrowError,
    record_batch::RecordBatch,
};
use sqlparser::ast::{
    self as sql, BinaryOperator, CastKind, FunctionArg, FunctionArgExpr, FunctionArguments, UnaryOperator,
};

/// Why an expression cannot be compiled or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ExprError {
    /// The expression uses SQL this engine does not evaluate.
    #[error("unsupported in expressions: {0}")]
    Unsupported(String),
    /// An Arrow kernel refused the operation, e.g. adding a string to a number.
    #[error("cannot evaluate `{expr}`: {source}")]
    Kernel {
        /// The expression being evaluated.
        expr: String,
        /// The kernel's error.
        source: ArrowError,
    },
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct PhysicalExpr {
    node: Node,
    text: String,
}

#[derive(Debug, Clone)]
enum Node {
    Column(String),
    Literal(Literal),
    Arith(Arith, Box<Node>, Box<Node>),
    Compare(Compare, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Negate(Box<Node>),
    IsNull { expr: Box<Node>, negated: bool },
    Like { expr: Box<Node>, pattern: Box<Node>, negated: bool, case_insensitive: bool },
    Case { whens: Vec<(Node, Node)>, otherwise: Option<Box<Node>> },
    Cast { expr: Box<Node>, to: DataType },
    Call { function: Function, args: Vec<Node> },
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy)]
enum Compare {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Lower,
    Upper,
    Length,
    Trim,
    Substr,
    Concat,
    Abs,
    Round,
    Floor,
    Ceil,
    Coalesce,
    ToTimestamp,
    EpochMillis,
}

impl Function {
    fn named(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "lower" => Self::Lower,
            "upper" => Self::Upper,
            "length" | "char_length" | "character_length" => Self::Length,
            "trim" | "btrim" => Self::Trim,
            "substr" | "substring" => Self::Substr,
            "concat" => Self::Concat,
            "abs" => Self::Abs,
            "round" => Self::Round,
            "floor" => Self::Floor,
            "ceil" | "ceiling" => Self::Ceil,
            "coalesce" => Self::Coalesce,
            "to_timestamp" => Self::ToTimestamp,
            "epoch_ms" | "to_epoch_millis" => Self::EpochMillis,
            _ => return None,
        })
    }
}

impl PhysicalExpr {
    /// Compiles a parsed SQL expression.
    pub fn compile(expr: &sql::Expr) -> Result<Self, ExprError> {
        Ok(Self { node: compile(expr)?, text: expr.to_string() })
    }

    /// Parses and compiles SQL text.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        let expr = weir_crds::expr::parse_expr(text).map_err(|e| ExprError::Unsupported(e.to_string()))?;
        Self::compile(&expr)
    }

    /// Evaluates the expression on every row of `batch`.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef, ExprError> {
        let value =
            eval(&self.node, batch).map_err(|Failure(source)| ExprError::Kernel { expr: self.text.clone(), source })?;
        value.into_array(batch.num_rows()).map_err(|source| ExprError::Kernel { expr: self.text.clone(), source })
    }

    /// Evaluates a predicate: true keeps the row, false and NULL drop it.
    pub fn evaluate_predicate(&self, batch: &RecordBatch) -> Result<BooleanArray, ExprError> {
        let result = self.evaluate(batch)?;
        let result = match result.data_type() {
            DataType::Boolean => result,
            _ => cast_with_options(&result, &DataType::Boolean, &SAFE)
                .map_err(|source| ExprError::Kernel { expr: self.text.clone(), source })?,
        };
        Ok(nulls_as_false(result.as_boolean()))
    }
}

/// The time zone of timestamps the engine creates (an offset: no time zone database needed).
const UTC: &str = "+00:00";

/// A filter mask where NULL means "drop".
pub fn nulls_as_false(mask: &BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 { mask.clone() } else { arrow::compute::prep_null_mask_filter(mask) }
}

const SAFE: CastOptions<'static> =
    CastOptions { safe: true, format_options: arrow::util::display::FormatOptions::new() };

fn unsupported(what: impl std::fmt::Display) -> ExprError {
    ExprError::Unsupported(what.to_string())
}

fn boxed(expr: &sql::Expr) -> Result<Box<Node>, ExprError> {
    compile(expr).map(Box::new)
}

fn compile(expr: &sql::Expr) -> Result<Node, ExprError> {
    use sql::Expr as E;
    Ok(match expr {
        E::Identifier(ident) => Node::Column(ident.value.clone()),
        E::CompoundIdentifier(parts) => {
            Node::Column(parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join("."))
        }
        E::Nested(inner) => compile(inner)?,
        E::Value(value) => Node::Literal(literal(&value.value)?),
        E::BinaryOp { left, op, right } => {
            let (l, r) = (boxed(left)?, boxed(right)?);
            match op {
                BinaryOperator::Plus => Node::Arith(Arith::Add, l, r),
                BinaryOperator::Minus => Node::Arith(Arith::Sub, l, r),
                BinaryOperator::Multiply => Node::Arith(Arith::Mul, l, r),
                BinaryOperator::Divide => Node::Arith(Arith::Div, l, r),
                BinaryOperator::Modulo => Node::Arith(Arith::Rem, l, r),
                BinaryOperator::Eq => Node::Compare(Compare::Eq, l, r),
                BinaryOperator::NotEq => Node::Compare(Compare::NotEq, l, r),
                BinaryOperator::Lt => Node::Compare(Compare::Lt, l, r),
                BinaryOperator::LtEq => Node::Compare(Compare::LtEq, l, r),
                BinaryOperator::Gt => Node::Compare(Compare::Gt, l, r),
                BinaryOperator::GtEq => Node::Compare(Compare::GtEq, l, r),
                BinaryOperator::And => Node::And(l, r),
                BinaryOperator::Or => Node::Or(l, r),
                BinaryOperator::StringConcat => Node::Call { function: Function::Concat, args: vec![*l, *r] },
                other => return Err(unsupported(format!("operator {other}"))),
            }
        }
        E::UnaryOp { op, expr } => match op {
            UnaryOperator::Not => Node::Not(boxed(expr)?),
            UnaryOperator::Minus => Node::Negate(boxed(expr)?),
            UnaryOperator::Plus => compile(expr)?,
            other => return Err(unsupported(format!("operator {other}"))),
        },
        E::IsNull(inner) => Node::IsNull { expr: boxed(inner)?, negated: false },
        E::IsNotNull(inner) => Node::IsNull { expr: boxed(inner)?, negated: true },
        E::InList { expr, list, negated } => {
            let target = compile(expr)?;
            let mut any: Option<Node> = None;
            for item in list {
                let test = Node::Compare(Compare::Eq, Box::new(target.clone()), boxed(item)?);
                any = Some(match any {
                    None => test,
                    Some(previous) => Node::Or(Box::new(previous), Box::new(test)),
                });
            }
            let any = any.ok_or_else(|| unsupported("an empty IN list"))?;
            if *negated { Node::Not(Box::new(any)) } else { any }
        }
        E::Between { expr, negated, low, high } => {
            let target = compile(expr)?;
            let within = Node::And(
                Box::new(Node::Compare(Compare::GtEq, Box::new(target.clone()), boxed(low)?)),
                Box::new(Node::Compare(Compare::LtEq, Box::new(target), boxed(high)?)),
            );
            if *negated { Node::Not(Box::new(within)) } else { within }
        }
        E::Like { negated, any: false, expr, pattern, escape_char: None } => {
            Node::Like { expr: boxed(expr)?, pattern: boxed(pattern)?, negated: *negated, case_insensitive: false }
        }
        E::ILike { negated, any: false, expr, pattern, escape_char: None } => {
            Node::Like { expr: boxed(expr)?, pattern: boxed(pattern)?, negated: *negated, case_insensitive: true }
        }
        E::Case { operand, conditions, else_result, .. } => {
            let operand = operand.as_deref().map(compile).transpose()?;
            let whens = conditions
                .iter()
                .map(|when| {
                    let condition = compile(&when.condition)?;
                    let condition = match &operand {
                        Some(op) => Node::Compare(Compare::Eq, Box::new(op.clone()), Box::new(condition)),
                        None => condition,
                    };
                    Ok((condition, compile(&when.result)?))
                })
                .collect::<Result<Vec<_>, ExprError>>()?;
            Node::Case { whens, otherwise: else_result.as_deref().map(boxed).transpose()? }
        }
        E::Cast { kind: CastKind::Cast | CastKind::TryCast | CastKind::DoubleColon, expr, data_type, format: None } => {
            Node::Cast { expr: boxed(expr)?, to: arrow_type(data_type)? }
        }
        E::Substring { expr, substring_from, substring_for, .. } => {
            let mut args = vec![compile(expr)?];
            args.push(match substring_from {
                Some(from) => compile(from)?,
                None => Node::Literal(Literal::Int(1)),
            });
            if let Some(length) = substring_for {
                args.push(compile(length)?);
            }
            Node::Call { function: Function::Substr, args }
        }
        E::Trim { trim_where: None, trim_what: None, expr, trim_characters: None } => {
            Node::Call { function: Function::Trim, args: vec![compile(expr)?] }
        }
        E::Ceil { expr, .. } => Node::Call { function: Function::Ceil, args: vec![compile(expr)?] },
        E::Floor { expr, .. } => Node::Call { function: Function::Floor, args: vec![compile(expr)?] },
        E::Function(function) => compile_call(function)?,
        other => return Err(unsupported(other)),
    })
}

fn compile_call(function: &sql::Function) -> Result<Node, ExprError> {
    let name = function.name.to_string();
    let known = Function::named(&name).ok_or_else(|| unsupported(format!("function {name}")))?;
    let FunctionArguments::List(list) = &function.args else {
        return Err(unsupported(format!("{name} without an argument list")));
    };
    let args = list
        .args
        .iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => compile(e),
            other => Err(unsupported(format!("argument {other} of {name}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let arity_ok = match known {
        Function::Concat | Function::Coalesce => !args.is_empty(),
        Function::Substr => (2..=3).contains(&args.len()),
        Function::Round => (1..=2).contains(&args.len()),
        _ => args.len() == 1,
    };
    if !arity_ok {
        return Err(unsupported(format!("{name} with {} arguments", args.len())));
    }
    Ok(Node::Call { function: known, args })
}

fn literal(value: &sql::Value) -> Result<Literal, ExprError> {
    Ok(match value {
        sql::Value::Number(text, _) => match text.parse::<i64>() {
            Ok(int) => Literal::Int(int),
            Err(_) => Literal::Float(text.parse().map_err(|_| unsupported(format!("number {text}")))?),
        },
        sql::Value::SingleQuotedString(s) | sql::Value::DoubleQuotedString(s) => Literal::Str(s.clone()),
        sql::Value::Boolean(b) => Literal::Bool(*b),
        sql::Value::Null => Literal::Null,
        other => return Err(unsupported(format!("literal {other}"))),
    })
}

fn arrow_type(data_type: &sql::DataType) -> Result<DataType, ExprError> {
    use sql::DataType as T;
    Ok(match data_type {
        T::Boolean | T::Bool => DataType::Boolean,
        T::TinyInt(_) | T::SmallInt(_) | T::Int(_) | T::Integer(_) | T::BigInt(_) | T::Int64 => DataType::Int64,
        T::Float(_) | T::Real | T::Double(_) | T::DoublePrecision | T::Float64 | T::Decimal(_) | T::Numeric(_) => {
            DataType::Float64
        }
        T::String(_) | T::Text | T::Varchar(_) | T::Char(_) => DataType::Utf8,
        T::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
        other => return Err(unsupported(format!("type {other}"))),
    })
}

// ---------------------------------------------------------------- evaluation

/// An intermediate result: a column, or one value standing for every row.
enum Value {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

/// A kernel error inside evaluation, given the expression's text at the top.
struct Failure(ArrowError);

impl From<ArrowError> for Failure {
    fn from(error: ArrowError) -> Self {
        Self(error)
    }
}

type Eval<T> = Result<T, Failure>;

impl Value {
    fn data_type(&self) -> &DataType {
        match self {
            Self::Array(a) | Self::Scalar(a) => a.data_type(),
        }
    }

    fn map(self, f: impl FnOnce(&ArrayRef) -> Result<ArrayRef, ArrowError>) -> Eval<Self> {
        Ok(match self {
            Self::Array(a) => Self::Array(f(&a)?),
            Self::Scalar(a) => Self::Scalar(f(&a)?),
        })
    }

    fn cast(self, to: &DataType) -> Eval<Self> {
        if self.data_type() == to {
            return Ok(self);
        }
        self.map(|a| cast_with_options(a, to, &SAFE))
    }

    fn into_array(self, rows: usize) -> Result<ArrayRef, ArrowError> {
        match self {
            Self::Array(a) => Ok(a),
            Self::Scalar(a) if a.is_null(0) => Ok(new_null_array(a.data_type(), rows)),
            Self::Scalar(a) => take(&a, &UInt32Array::from(vec![0; rows]), None),
        }
    }
}

/// Applies a two-argument kernel to any combination of columns and scalars.
fn binary(
    left: &Value,
    right: &Value,
    kernel: impl Fn(&dyn arrow::array::Datum, &dyn arrow::array::Datum) -> Result<ArrayRef, ArrowError>,
) -> Eval<Value> {
    let scalar = |a: &ArrayRef| Scalar::new(a.clone());
    Ok(match (left, right) {
        (Value::Array(l), Value::Array(r)) => Value::Array(kernel(l, r)?),
        (Value::Array(l), Value::Scalar(r)) => Value::Array(kernel(l, &scalar(r))?),
        (Value::Scalar(l), Value::Array(r)) => Value::Array(kernel(&scalar(l), r)?),
        (Value::Scalar(l), Value::Scalar(r)) => Value::Scalar(kernel(&scalar(l), &scalar(r))?),
    })
}

fn is_timestamp(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(..))
}

/// The type two operands are brought to before a kernel combines them.
fn common_type(a: &DataType, b: &DataType) -> DataType {
    match (a, b) {
        _ if a == b => a.clone(),
        (DataType::Null, other) | (other, DataType::Null) => other.clone(),
        (x, y) if x.is_integer() && y.is_integer() => DataType::Int64,
        (x, y) if x.is_numeric() && y.is_numeric() => DataType::Float64,
        (t, DataType::Utf8 | DataType::LargeUtf8) | (DataType::Utf8 | DataType::LargeUtf8, t) if is_timestamp(t) => {
            t.clone()
        }
        (t, i) | (i, t) if is_timestamp(t) && i.is_integer() => DataType::Int64,
        (DataType::Utf8View, _) | (_, DataType::Utf8View) | (DataType::LargeUtf8, _) | (_, DataType::LargeUtf8) => {
            DataType::Utf8
        }
        _ => DataType::Utf8,
    }
}

fn coerced(left: Value, right: Value) -> Eval<(Value, Value)> {
    let target = common_type(left.data_type(), right.data_type());
    Ok((left.cast(&target)?, right.cast(&target)?))
}

fn eval(node: &Node, batch: &RecordBatch) -> Eval<Value> {
    match node {
        // A field no record of the batch has reads as NULL: JSON records may omit fields.
        Node::Column(name) => Ok(batch
            .column_by_name(name)
            .cloned()
            .map_or_else(|| Value::Scalar(new_null_array(&DataType::Null, 1)), Value::Array)),
        Node::Literal(literal) => Ok(Value::Scalar(literal_array(literal))),
        Node::Arith(op, l, r) => {
            let (l, r) = (eval(l, batch)?, eval(r, batch)?);
            let (l, r) = match op {
                Arith::Div => (l.cast(&DataType::Float64)?, r.cast(&DataType::Float64)?),
                _ => coerced(l, r)?,
            };
            match op {
                Arith::Add => binary(&l, &r, numeric::add_wrapping),
                Arith::Sub => binary(&l, &r, numeric::sub_wrapping),
                Arith::Mul => binary(&l, &r, numeric::mul_wrapping),
                Arith::Div => binary(&l, &r, numeric::div),
                Arith::Rem => {
                    let zero = r.data_type().is_floating().then(|| literal_array(&Literal::Float(0.0)));
                    let zero = zero.unwrap_or_else(|| literal_array(&Literal::Int(0)));
                    let zero = cast_with_options(&zero, r.data_type(), &SAFE)?;
                    let divisor_is_zero = binary(&r, &Value::Scalar(zero), |a, b| Ok(Arc::new(cmp::eq(a, b)?)))?;
                    let safe_divisor = match (&r, divisor_is_zero) {
                        (Value::Array(d), Value::Array(z)) => Value::Array(arrow::compute::nullif(d, z.as_boolean())?),
                        (Value::Scalar(d), Value::Scalar(z)) => {
                            Value::Scalar(arrow::compute::nullif(d, z.as_boolean())?)
                        }
                        (_, _) => r,
                    };
                    binary(&l, &safe_divisor, numeric::rem)
                }
            }
        }
        Node::Compare(op, l, r) => {
            let (l, r) = coerced(eval(l, batch)?, eval(r, batch)?)?;
            let kernel = match op {
                Compare::Eq => cmp::eq,
                Compare::NotEq => cmp::neq,
                Compare::Lt => cmp::lt,
                Compare::LtEq => cmp::lt_eq,
                Compare::Gt => cmp::gt,
                Compare::GtEq => cmp::gt_eq,
            };
            binary(&l, &r, |a, b| Ok(Arc::new(kernel(a, b)?)))
        }
        Node::And(l, r) | Node::Or(l, r) => {
            let is_and = matches!(node, Node::And(..));
            let rows = batch.num_rows();
            let l = eval(l, batch)?.cast(&DataType::Boolean)?.into_array(rows)?;
            let r = eval(r, batch)?.cast(&DataType::Boolean)?.into_array(rows)?;
            let combined = if is_and {
                and_kleene(l.as_boolean(), r.as_boolean())?
            } else {
                or_kleene(l.as_boolean(), r.as_boolean())?
            };
            Ok(Value::Array(Arc::new(combined)))
        }
        Node::Not(inner) => eval(inner, batch)?.cast(&DataType::Boolean)?.map(|a| Ok(Arc::new(not(a.as_boolean())?))),
        Node::Negate(inner) => eval(inner, batch)?.map(|a| numeric::neg_wrapping(a)),
        Node::IsNull { expr, negated } => {
            let negated = *negated;
            eval(expr, batch)?.map(|a| {
                let nulls = if negated { arrow::compute::is_not_null(a)? } else { arrow::compute::is_null(a)? };
                Ok(Arc::new(nulls))
            })
        }
        Node::Like { expr, pattern, negated, case_insensitive } => {
            let text = eval(expr, batch)?.cast(&DataType::Utf8)?;
            let pattern = eval(pattern, batch)?.cast(&DataType::Utf8)?;
            let kernel = match (negated, case_insensitive) {
                (false, false) => arrow::compute::kernels::comparison::like,
                (true, false) => arrow::compute::kernels::comparison::nlike,
                (false, true) => arrow::compute::kernels::comparison::ilike,
                (true, true) => arrow::compute::kernels::comparison::nilike,
            };
            binary(&text, &pattern, |a, b| Ok(Arc::new(kernel(a, b)?)))
        }
        Node::Case { whens, otherwise } => eval_case(whens, otherwise.as_deref(), batch),
        Node::Cast { expr, to } => eval(expr, batch)?.cast(to),
        Node::Call { function, args } => {
            let args = args.iter().map(|a| eval(a, batch)).collect::<Eval<Vec<_>>>()?;
            call(*function, args, batch.num_rows())
        }
    }
}

fn literal_array(literal: &Literal) -> ArrayRef {
    match literal {
        Literal::Null => new_null_array(&DataType::Null, 1),
        Literal::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
        Literal::Int(i) => Arc::new(Int64Array::from(vec![*i])),
        Literal::Float(f) => Arc::new(Float64Array::from(vec![*f])),
        Literal::Str(s) => Arc::new(StringArray::from(vec![s.as_str()])),
    }
}

fn eval_case(whens: &[(Node, Node)], otherwise: Option<&Node>, batch: &RecordBatch) -> Eval<Value> {
    let rows = batch.num_rows();
    let results = whens.iter().map(|(_, result)| eval(result, batch)).collect::<Eval<Vec<_>>>()?;
    let otherwise = otherwise.map(|o| eval(o, batch)).transpose()?;
    let target = results
        .iter()
        .chain(otherwise.iter())
        .map(Value::data_type)
        .fold(DataType::Null, |acc, t| common_type(&acc, t));
    let mut result = match otherwise {
        Some(value) => value.cast(&target)?.into_array(rows)?,
        None => new_null_array(&target, rows),
    };
    for ((condition, _), value) in whens.iter().zip(results).rev() {
        let condition = eval(condition, batch)?.cast(&DataType::Boolean)?.into_array(rows)?;
        let condition = nulls_as_false(condition.as_boolean());
        let value = value.cast(&target)?.into_array(rows)?;
        result = zip(&condition, &value, &result)?;
    }
    Ok(Value::Array(result))
}

fn call(function: Function, mut args: Vec<Value>, rows: usize) -> Eval<Value> {
    let first = args.remove(0);
    match function {
        Function::Lower | Function::Upper | Function::Trim => {
            let transform: fn(&str) -> String = match function {
                Function::Lower => str::to_lowercase,
                Function::Upper => str::to_uppercase,
                _ => |s| s.trim().to_owned(),
            };
            first
                .cast(&DataType::Utf8)?
                .map(|a| Ok(Arc::new(a.as_string::<i32>().iter().map(|v| v.map(transform)).collect::<StringArray>())))
        }
        Function::Length => first.cast(&DataType::Utf8)?.map(|a| {
            let chars: Int64Array = a.as_string::<i32>().iter().map(|v| v.map(|s| s.chars().count() as i64)).collect();
            Ok(Arc::new(chars))
        }),
        Function::Substr => {
            let start = scalar_int(&args[0]).unwrap_or(1);
            let len = args.get(1).and_then(scalar_int).map(|l| l.max(0) as u64);
            // SQL counts from 1; arrow from 0.
            first.cast(&DataType::Utf8)?.map(|a| substring(a.as_ref(), (start - 1).max(0), len))
        }
        Function::Concat => {
            let mut out = first.cast(&DataType::Utf8)?.into_array(rows)?;
            for next in args {
                let next = next.cast(&DataType::Utf8)?.into_array(rows)?;
                let joined = arrow::compute::kernels::concat_elements::concat_elements_utf8(
                    out.as_string::<i32>(),
                    next.as_string::<i32>(),
                )?;
                out = Arc::new(joined);
            }
            Ok(Value::Array(out))
        }
        Function::Abs => {
            if first.data_type().is_integer() {
                first.cast(&DataType::Int64)?.map(|a| {
                    Ok(Arc::new(arrow::compute::unary::<_, _, Int64Type>(
                        a.as_primitive::<Int64Type>(),
                        i64::wrapping_abs,
                    )))
                })
            } else {
                float_unary(first, f64::abs)
            }
        }
        Function::Floor if first.data_type().is_integer() => Ok(first),
        Function::Ceil if first.data_type().is_integer() => Ok(first),
        Function::Floor => float_unary(first, f64::floor),
        Function::Ceil => float_unary(first, f64::ceil),
        Function::Round => {
            let digits = args.first().and_then(scalar_int).unwrap_or(0) as i32;
            let factor = 10f64.powi(digits);
            float_unary(first, move |x| (x * factor).round() / factor)
        }
        Function::Coalesce => {
            let target =
                args.iter().map(Value::data_type).fold(first.data_type().clone(), |acc, t| common_type(&acc, t));
            let mut result = first.cast(&target)?.into_array(rows)?;
            for next in args {
                let present = arrow::compute::is_not_null(&result)?;
                let next = next.cast(&target)?.into_array(rows)?;
                result = zip(&present, &result, &next)?;
            }
            Ok(Value::Array(result))
        }
        Function::ToTimestamp => first.cast(&DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))),
        Function::EpochMillis => {
            let ts = first.cast(&DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())))?;
            ts.cast(&DataType::Int64)
        }
    }
}

fn float_unary(value: Value, f: impl Fn(f64) -> f64 + Copy) -> Eval<Value> {
    value
        .cast(&DataType::Float64)?
        .map(|a| Ok(Arc::new(arrow::compute::unary::<_, _, Float64Type>(a.as_primitive::<Float64Type>(), f))))
}

fn scalar_int(value: &Value) -> Option<i64> {
    match value {
        Value::Scalar(a) => cast_with_options(a, &DataType::Int64, &SAFE)
            .ok()
            .and_then(|c| c.as_primitive::<Int64Type>().iter().next().flatten()),
        Value::Array(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, StringArray};

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            ("amount", Arc::new(Float64Array::from(vec![Some(10.0), Some(-2.5), None, Some(0.0)])) as ArrayRef),
            ("qty", Arc::new(Int64Array::from(vec![3, 0, 7, 2])) as ArrayRef),
            ("currency", Arc::new(StringArray::from(vec![Some("EUR"), Some("usd"), Some("EUR"), None])) as ArrayRef),
            ("partition", Arc::new(Int32Array::from(vec![0, 1, 2, 3])) as ArrayRef),
            ("ts", Arc::new(StringArray::from(vec!["2024-05-01T10:00:00Z"; 4])) as ArrayRef),
        ])
        .unwrap()
    }

    fn keep(expr: &str) -> Vec<bool> {
        let mask = PhysicalExpr::parse(expr).unwrap().evaluate_predicate(&batch()).unwrap();
        mask.iter().map(|v| v.unwrap_or(false)).collect()
    }

    fn floats(expr: &str) -> Vec<Option<f64>> {
        let out = PhysicalExpr::parse(expr).unwrap().evaluate(&batch()).unwrap();
        cast_with_options(&out, &DataType::Float64, &SAFE).unwrap().as_primitive::<Float64Type>().iter().collect()
    }

    fn strings(expr: &str) -> Vec<Option<String>> {
        let out = PhysicalExpr::parse(expr).unwrap().evaluate(&batch()).unwrap();
        let text = cast_with_options(&out, &DataType::Utf8, &SAFE).unwrap();
        text.as_string::<i32>().iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn comparisons_and_boolean_logic_follow_sql() {
        assert_eq!(keep("amount > 0 AND currency = 'EUR'"), [true, false, false, false]);
        assert_eq!(keep("amount > 0 OR qty = 0"), [true, true, false, false]);
        assert_eq!(keep("NOT (qty >= 3)"), [false, true, false, true]);
    }

    #[test]
    fn null_in_a_predicate_drops_the_row() {
        assert_eq!(keep("amount < 100"), [true, true, false, true]);
        assert_eq!(keep("amount IS NULL"), [false, false, true, false]);
        assert_eq!(keep("currency IS NOT NULL"), [true, true, true, false]);
    }

    #[test]
    fn integers_and_floats_mix_in_arithmetic() {
        assert_eq!(floats("amount * qty + 1"), [Some(31.0), Some(1.0), None, Some(1.0)]);
        assert_eq!(floats("qty / 2"), [Some(1.5), Some(0.0), Some(3.5), Some(1.0)], "/ divides as floating point");
        assert_eq!(keep("partition = qty - 3"), [true, false, false, false], "int32 meets int64");
    }

    #[test]
    fn remainder_by_zero_is_null() {
        assert_eq!(floats("7 % qty"), [Some(1.0), None, Some(0.0), Some(1.0)]);
    }

    #[test]
    fn in_between_and_like() {
        assert_eq!(keep("qty IN (0, 2)"), [false, true, false, true]);
        assert_eq!(keep("qty NOT IN (0, 2)"), [true, false, true, false]);
        assert_eq!(keep("qty BETWEEN 2 AND 3"), [true, false, false, true]);
        assert_eq!(keep("currency LIKE 'E%'"), [true, false, true, false]);
        assert_eq!(keep("currency ILIKE 'US%'"), [false, true, false, false]);
    }

    #[test]
    fn case_picks_the_first_matching_branch() {
        let out = strings("CASE WHEN qty > 5 THEN 'many' WHEN qty > 0 THEN 'some' ELSE 'none' END");
        assert_eq!(out, [Some("some".into()), Some("none".into()), Some("many".into()), Some("some".into())]);
        let simple = strings("CASE currency WHEN 'EUR' THEN 'euro' END");
        assert_eq!(simple, [Some("euro".into()), None, Some("euro".into()), None]);
    }

    #[test]
    fn casts_and_string_functions() {
        assert_eq!(floats("CAST(qty AS DOUBLE) / 4"), [Some(0.75), Some(0.0), Some(1.75), Some(0.5)]);
        assert_eq!(strings("upper(currency)")[1], Some("USD".into()));
        assert_eq!(strings("lower(currency) || '-' || qty")[0], Some("eur-3".into()));
        assert_eq!(strings("substring(currency FROM 2 FOR 1)")[0], Some("U".into()));
        assert_eq!(floats("length(currency)")[0], Some(3.0));
        assert_eq!(strings("coalesce(currency, 'none')")[3], Some("none".into()));
    }

    #[test]
    fn numeric_functions() {
        assert_eq!(floats("abs(amount)")[1], Some(2.5));
        assert_eq!(floats("round(amount * 1.19, 1)")[0], Some(11.9));
        assert_eq!(floats("floor(amount)")[1], Some(-3.0));
        assert_eq!(floats("ceil(amount)")[1], Some(-2.0));
    }

    #[test]
    fn timestamps_parse_from_rfc3339_text() {
        assert_eq!(floats("epoch_ms(ts)")[0], Some(1_714_557_600_000.0));
        assert_eq!(keep("to_timestamp(ts) > '2024-01-01T00:00:00Z'"), [true; 4]);
    }

    #[test]
    fn a_field_no_record_has_reads_as_null() {
        assert_eq!(keep("nope > 1"), [false; 4]);
        assert_eq!(keep("nope IS NULL"), [true; 4]);
    }

    #[test]
    fn unknown_functions_are_refused_at_compile_time() {
        assert!(matches!(PhysicalExpr::parse("frobnicate(qty)"), Err(ExprError::Unsupported(_))));
    }
}
