//! Public REST shapes of the contract (`../shared/contract/wrenn-api.md`).
