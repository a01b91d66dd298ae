# lme4 fixture for a rank-deficient fixed-effect design (tests/test_formula.py).
#
#   Rscript tests/reference/make_reference_rankdef.R     # from the repository root
#
# Writes tests/reference/data/rankdef.csv (the data), tests/reference/data/rankdef_qr.csv (small
# matrices) and tests/reference/lme4_rankdef.json. Level "b" of the factor f occurs only at x = 2,
# so the column fb:x equals 2 * fb. lme4 (chkRank.drop.cols) runs R's qr(X, tol = 1e-7), LINPACK's
# dqrdc2 with limited pivoting, and drops the later column, fb:x; a pivoted QR that picks the
# largest column first (LAPACK geqp3) drops fb instead.
suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

dir <- "tests/reference"
dat <- file.path(dir, "data")
set.seed(20261202)
n_g <- 24
per <- 6
g <- rep(sprintf("g%02d", seq_len(n_g)), each = per)
f <- rep(c("a", "b", "c"), length.out = n_g * per)
x <- round(runif(n_g * per, 0, 4), 2)
x[f == "b"] <- 2
u <- rnorm(n_g, sd = 0.8)[as.integer(factor(g))]
y <- round(1 + 0.5 * (f == "b") - 0.4 * (f == "c") + 0.3 * x + 0.2 * x * (f == "c") + u +
           rnorm(n_g * per), 4)
d <- data.frame(y = y, f = f, x = x, g = g, stringsAsFactors = FALSE)
write.csv(d, file.path(dat, "rankdef.csv"), row.names = FALSE)

ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10))
m <- lmer(y ~ f * x + (1 | g), data = d, REML = TRUE, control = ctrl)
X <- model.matrix(y ~ f * x, d)
dropped <- names(attr(getME(m, "X"), "col.dropped"))
cf <- summary(m)$coefficients

# R's default qr (dqrdc2, tol 1e-7) on small matrices: its rank and pivot.
set.seed(7)
k <- 40
one <- rep(1, k)
x1 <- rnorm(k)
x2 <- sample(1:6, k, replace = TRUE)
cases <- list(
  duplicate_scaled = cbind(one, x1, 2 * x1, x2),
  sum_of_columns = cbind(one, x1, x2, x1 + x2, x2 - 3),
  zero_column = cbind(one, 0 * x1, x1),
  nearly_dependent_below_tol = cbind(one, x1, x1 + 1e-9 * rnorm(k), x2),
  nearly_dependent_above_tol = cbind(one, x1, x1 + 1e-5 * rnorm(k), x2),
  interaction = X
)
qr_rows <- list()
qr_cases <- list()
for (nm in names(cases)) {
  M <- unname(cases[[nm]])
  q <- qr(M, tol = 1e-7)
  qr_cases[[nm]] <- list(rank = q$rank, pivot = q$pivot - 1L, ncol = ncol(M))
  if (nm != "interaction") {
    qr_rows[[nm]] <- data.frame(case = nm, row = seq_len(nrow(M)), M)
  }
}
long <- do.call(rbind, lapply(names(qr_rows), function(nm) {
  M <- qr_rows[[nm]]
  vals <- as.matrix(M[, -(1:2)])
  data.frame(case = nm, row = rep(M$row, ncol(vals)), col = rep(seq_len(ncol(vals)) - 1L,
             each = nrow(vals)), value = as.vector(vals))
}))
write.csv(long, file.path(dat, "rankdef_qr.csv"), row.names = FALSE)

out <- list(
  case = "rankdef",
  data = "rankdef.csv",
  formula = "y ~ f * x + (1 | g)",
  x_columns = colnames(X),
  dropped = dropped,
  message = "fixed-effect model matrix is rank deficient so dropping 1 column / coefficient",
  fixef = data.frame(term = rownames(cf), estimate = cf[, "Estimate"],
                     std_error = cf[, "Std. Error"], row.names = NULL),
  theta = unname(getME(m, "theta")),
  sigma = sigma(m),
  reml_criterion = REMLcrit(m),
  qr = qr_cases,
  lme4_version = as.character(packageVersion("lme4"))
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(dir, "lme4_rankdef.json"))
