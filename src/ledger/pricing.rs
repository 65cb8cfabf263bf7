//! What an answer costs: integer micros, rounded up, never a float.

use crate::config::ModelConfig;
use crate::upstream::chunk::Usage;

const MILLION: u128 = 1_000_000;

/// The cost of `usage` at `price`: tokens × price per million, rounded up to a whole
/// micro, plus the flat per-request price. Saturates instead of overflowing.
pub fn cost(price: &ModelConfig, usage: &Usage) -> i64 {
    let input = u128::from(usage.prompt_tokens) * u128::from(price.input_micros_per_million);
    let output = u128::from(usage.completion_tokens) * u128::from(price.output_micros_per_million);
    let total = input
        .saturating_add(output)
        .div_ceil(MILLION)
        .saturating_add(u128::from(price.request_micros));
    i64::try_from(total).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: u64, output: u64, request: u64) -> ModelConfig {
        ModelConfig {
            input_micros_per_million: input,
            output_micros_per_million: output,
            request_micros: request,
            ..ModelConfig::default()
        }
    }

    fn usage(p: u64, c: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: p.saturating_add(c),
        }
    }

    #[test]
    fn rounds_up_never_down() {
        // 1 token at 150,000 micros per million = 0.15 micro → 1 micro.
        assert_eq!(cost(&price(150_000, 0, 0), &usage(1, 0)), 1);
        // 7 + 3 tokens: 7×150,000 + 3×600,000 = 2,850,000 → 2.85 → 3.
        assert_eq!(cost(&price(150_000, 600_000, 0), &usage(7, 3)), 3);
        // Exact multiples stay exact.
        assert_eq!(cost(&price(1_000_000, 2_000_000, 0), &usage(3, 4)), 11);
        assert_eq!(cost(&price(0, 0, 500), &usage(1000, 1000)), 500);
        assert_eq!(cost(&price(0, 0, 0), &usage(1000, 1000)), 0);
        assert_eq!(
            cost(
                &price(u64::MAX, u64::MAX, u64::MAX),
                &usage(u64::MAX, u64::MAX)
            ),
            i64::MAX
        );
    }
}
