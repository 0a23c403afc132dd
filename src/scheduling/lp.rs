//! The one linear program the packers solve: max c·y s.t. A y ≤ b, y ≥ 0, with b ≥ 0, a packing LP.
//!
//! Read with rows as node patterns (or instance types) and columns as pod shapes, it is the dual of the covering
//! problem min b·x s.t. Aᵀx ≥ c, x ≥ 0: the cheapest fractional mix of nodes that holds the demanded pods. The
//! re-packer reads both sides (pattern counts x, per-shape dual prices y); B2's lower bound reads the value.
//! y = 0 is feasible, so one simplex phase does.

/// An optimal solution, both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct LpOptimum {
    /// The optimum of c·y (equal to b·x).
    pub value: f64,
    /// y, per column.
    pub y: Vec<f64>,
    /// x, the dual value of each row's constraint: the covering problem's solution.
    pub row_duals: Vec<f64>,
}

/// Solves max c·y s.t. A y ≤ b, y ≥ 0 (negative entries of b are read as 0) by the simplex method on a dense
/// dictionary: Dantzig's rule, then Bland's (which cannot cycle) once the pivots run long on a degenerate vertex.
/// None when unbounded (a column with positive c that no row limits) or when the pivot budget runs out.
pub fn max_packing(a: &[Vec<f64>], b: &[f64], c: &[f64]) -> Option<LpOptimum> {
    const EPS: f64 = 1e-9;
    let (m, n) = (a.len(), c.len());
    // d[i][0..n] holds the coefficients of the non-basic variables in row i, d[i][n] its right-hand side; row m
    // is the objective (negated reduced costs, value in d[m][n]).
    let mut d = vec![vec![0.0; n + 1]; m + 1];
    for ((row, a_i), &b_i) in d.iter_mut().zip(a).zip(b) {
        for (v, &coefficient) in row.iter_mut().zip(a_i.iter().take(n)) {
            *v = coefficient;
        }
        row[n] = b_i.max(0.0);
    }
    for (v, &c_j) in d[m].iter_mut().zip(c) {
        *v = -c_j;
    }
    let mut basic: Vec<usize> = (n..n + m).collect();
    let mut nonbasic: Vec<usize> = (0..n).collect();
    let budget = 50 * (m + n) + 1000;
    for pivot in 0..budget {
        let bland = pivot > 10 * (m + n) + 100;
        let mut s: Option<usize> = None;
        for j in 0..n {
            if d[m][j] < -EPS {
                let better = match s {
                    None => true,
                    Some(s) if bland => nonbasic[j] < nonbasic[s],
                    Some(s) => d[m][j] < d[m][s],
                };
                if better {
                    s = Some(j);
                }
            }
        }
        let Some(s) = s else {
            let mut row_duals = vec![0.0; m];
            let mut y = vec![0.0; n];
            for (j, &v) in nonbasic.iter().enumerate() {
                if v >= n {
                    row_duals[v - n] = d[m][j].max(0.0);
                }
            }
            for (i, &v) in basic.iter().enumerate() {
                if v < n {
                    y[v] = d[i][n].max(0.0);
                }
            }
            return Some(LpOptimum {
                value: d[m][n],
                y,
                row_duals,
            });
        };
        // The ratio test, ties to the lowest basic variable (Bland's, harmless under Dantzig's).
        let mut r: Option<usize> = None;
        for i in 0..m {
            if d[i][s] <= EPS {
                continue;
            }
            let better = match r {
                None => true,
                Some(r) => {
                    let (q, qr) = (d[i][n] / d[i][s], d[r][n] / d[r][s]);
                    q < qr - EPS || (q <= qr + EPS && basic[i] < basic[r])
                }
            };
            if better {
                r = Some(i);
            }
        }
        let r = r?;
        let inv = 1.0 / d[r][s];
        let pivot_row = d[r].clone();
        for (i, row) in d.iter_mut().enumerate() {
            if i == r || row[s] == 0.0 {
                continue;
            }
            let f = row[s] * inv;
            for (j, (v, &p)) in row.iter_mut().zip(&pivot_row).enumerate() {
                if j != s {
                    *v -= p * f;
                }
            }
            row[s] = -f;
        }
        for (j, v) in d[r].iter_mut().enumerate() {
            if j != s {
                *v *= inv;
            }
        }
        d[r][s] = inv;
        std::mem::swap(&mut basic[r], &mut nonbasic[s]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_packing_lp_has_its_textbook_optimum_on_both_sides() {
        // max 3y0 + 2y1 s.t. y0 + y1 ≤ 4, y0 + 3y1 ≤ 6, y0 ≤ 2: optimum y = (2, 4/3), value 26/3; the dual
        // (covering) solution is x = (0, 2/3, 7/3), and b·x = 6·2/3 + 2·7/3 = 26/3 too.
        let a = [vec![1.0, 1.0], vec![1.0, 3.0], vec![1.0, 0.0]];
        let o = max_packing(&a, &[4.0, 6.0, 2.0], &[3.0, 2.0]).unwrap();
        let near =
            |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-9);
        assert!((o.value - 26.0 / 3.0).abs() < 1e-9, "{o:?}");
        assert!(near(&o.y, &[2.0, 4.0 / 3.0]), "{o:?}");
        assert!(near(&o.row_duals, &[0.0, 2.0 / 3.0, 7.0 / 3.0]), "{o:?}");
    }

    #[test]
    fn an_unlimited_column_is_unbounded() {
        // y1 appears in no row: c·y grows without end.
        assert_eq!(max_packing(&[vec![1.0, 0.0]], &[1.0], &[1.0, 1.0]), None);
    }
}
